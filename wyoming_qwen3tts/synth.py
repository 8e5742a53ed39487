"""wyoming-qwen3tts-synth: synthesize one text to a WAV file (or raw PCM on stdout) and show where the time went.

    wyoming-qwen3tts-synth -m model.gguf -t "Hello there." -o out.wav --speaker vivian
    echo "Hello there." | wyoming-qwen3tts-synth -m model.gguf --stream -o - | aplay -r 24000 -f S16_LE -c 1
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import soundfile

from .audio import load_audio
from .audio_events import pcm16
from .engine import FRAME_RATE, Qwen3TTS, SynthesisStats
from .request import SynthesisRequest, add_sampling_arguments, sampling_options
from .voice_library import VoiceLibrary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wyoming-qwen3tts-synth", description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, help="GGUF model file (python -m wyoming_qwen3tts.convert)")
    p.add_argument("-t", "--text", help="text to speak (default: read from standard input)")
    p.add_argument("-o", "--output", required=True, help="output WAV file, or - for raw 16-bit PCM on stdout")
    p.add_argument("--speaker", help="built-in speaker (CustomVoice models)")
    p.add_argument("--ref-audio", help="clone the voice of this recording (Base models)")
    p.add_argument("--ref-text", help="the recording's transcript: ICL cloning (without it: x-vector only)")
    p.add_argument("--voice", help="a voice of the voice library (--voices-dir)")
    p.add_argument("--voices-dir", help="voice library directory (one folder per voice)")
    p.add_argument("--language", default=None, help="language (default: auto)")
    p.add_argument("--instruct", help="style instruction (1.7B CustomVoice, VoiceDesign)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    add_sampling_arguments(p, max_frames_help="frame cap (default: the runaway guard from the text length)")
    p.add_argument("--threads", type=int, help="compute threads (default: all cores)")
    p.add_argument("--stream", action="store_true", help="write audio as it is generated")
    p.add_argument("--debug", action="store_true", help="debug logging")
    return p


def voice_request(tts: Qwen3TTS, args: argparse.Namespace) -> dict:
    """Engine arguments of --ref-audio/--ref-text or --voice/--voices-dir (cloned or designed voices)."""
    if args.ref_audio and args.voice:
        raise ValueError("give either --ref-audio or --voice, not both")
    if args.ref_audio:
        wav, sr = load_audio(args.ref_audio)
        request = {"speaker_embedding": tts.speaker_embedding(wav, sr)}
        if args.ref_text:
            request.update(ref_codes=tts.encode(wav, sr), ref_text=args.ref_text)
        return request
    if args.ref_text:
        raise ValueError("--ref-text needs --ref-audio")
    if args.voice:
        if not args.voices_dir:
            raise ValueError("--voice needs --voices-dir")
        library = VoiceLibrary(args.voices_dir, tts)
        voices = library.scan()
        if args.voice not in voices:
            raise ValueError(f"unknown voice {args.voice!r}; voices in {args.voices_dir}: {', '.join(voices) or 'none'}")
        return library.request(voices[args.voice])
    return {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    text = args.text if args.text is not None else sys.stdin.read()

    t0 = time.perf_counter()
    try:
        tts = Qwen3TTS(args.model, threads=args.threads)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0

    try:
        fields = dict(text=text, speaker=args.speaker, language=args.language, instruct=args.instruct, seed=args.seed)
        request = SynthesisRequest(**{**fields, **sampling_options(args), **voice_request(tts, args)})
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = SynthesisStats()
    to_stdout = args.output == "-"
    try:
        if not args.stream:
            # One-shot: the same frames as streamed, plus the reference's exact ICL cut (see Qwen3TTS.synthesize).
            chunks = [tts.synthesize(request, stats=stats)]
        else:
            chunks = tts.stream(request, stats=stats)
        if to_stdout:
            out = sys.stdout.buffer
            for pcm in chunks:
                out.write(pcm16(pcm).tobytes())
                out.flush()
        elif args.stream:
            with soundfile.SoundFile(args.output, "w", samplerate=tts.sample_rate, channels=1,
                                     subtype="PCM_16") as f:
                for pcm in chunks:
                    f.write(pcm16(pcm))
                    f.flush()
        else:
            soundfile.write(args.output, pcm16(chunks[0]), tts.sample_rate, subtype="PCM_16")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(report(load_s, stats), file=sys.stderr)
    return 0


def report(load_s: float, st: SynthesisStats) -> str:
    per = (lambda ms: ms / st.frames) if st.frames else (lambda ms: float("nan"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = f"{st.first_audio_s * 1000:.0f} ms" if st.first_audio_s is not None else "-"
    rows = [
        ("load", f"{load_s * 1000:.0f} ms"),
        ("tokenize", f"{st.tokenize_ms:.1f} ms"),
        ("prefill", f"{st.prefill_ms:.1f} ms"),
        ("talker", f"{per(st.talker_ms):.1f} ms/frame"),
        ("code predictor", f"{per(st.code_predictor_ms):.1f} ms/frame"),
        ("codec", f"{per(st.codec_ms):.1f} ms/frame"),
        ("total", f"{st.total_s:.2f} s for {st.frames} frames ({st.frames / FRAME_RATE:.2f} s of audio)"),
        ("real-time factor", f"{st.rtf:.2f}"),
        ("time to first audio", first),
        ("peak RSS", f"{peak_mb:.0f} MB"),
    ]
    return "\n".join(f"{k:>20}: {v}" for k, v in rows)


if __name__ == "__main__":
    sys.exit(main())
