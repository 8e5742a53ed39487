"""Text -> codes -> waveform through the public API and the synthesis CLI, on the tiny fixtures.

End-to-end parity: the engine's greedy codes, decoded by the engine, equal the reference's decode of the
reference's codes (tests/fixtures/speech-tokenizer/oracle.safetensors holds the reference decode of the codes of
every tiny-17 mode, concatenated in make_fixtures.modes() order)."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file

from wyoming_qwen3tts.engine import SynthesisStats, frame_budget

from helpers import FIXTURES, SPF, mode_kwargs, oracle

WAVE_TOL = 1e-6


@pytest.fixture(scope="module")
def codec_oracle():
    return load_file(str(FIXTURES / "speech-tokenizer" / "oracle.safetensors"))


def test_sample_rate(tts):
    assert tts.sample_rate == 24000 and tts.samples_per_frame == SPF


def test_end_to_end_greedy_text_to_waveform(tts, codec_oracle):
    o = oracle("tiny-17")
    text_ids = o["ids.input"][0].tolist()[3:-5]
    wav = tts.synthesize(text_ids=text_ids, greedy=True, max_frames=5, **mode_kwargs(o)["custom_voice"])
    want = codec_oracle["dec.wav_decode"][: 5 * SPF]  # the decoder is causal: the first 5 frames stand alone
    assert wav.shape == want.shape
    assert np.abs(wav - want).max() <= WAVE_TOL


def test_every_mode_codes_decode_like_the_reference(tts, codec_oracle):
    o = oracle("tiny-17")
    text_ids = o["ids.input"][0].tolist()[3:-5]
    codes = [tts.generate_codes(text_ids=text_ids, greedy=True, max_frames=5, **kw)
             for kw in mode_kwargs(o).values()]
    # mode_kwargs lists the modes in the generator's order: custom_voice, custom_voice_streaming_text, ...; the
    # oracle concatenates them in make_fixtures.modes() order. Reorder by matching the reference codes.
    ref_codes = codec_oracle["dec.codes"]
    order = [next(i for i, c in enumerate(codes) if np.array_equal(c, ref_codes[5 * k: 5 * k + 5]))
             for k in range(len(codes))]
    wav = tts.decode(np.concatenate([codes[i] for i in order]))
    assert np.abs(wav - codec_oracle["dec.wav_decode"]).max() <= WAVE_TOL


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_stream_equals_synthesize_with_the_same_seed(tts, frames_per_chunk):
    kw = dict(text="Hello there, how are you?", speaker="vivian", language="english", seed=11, min_frames=12,
              max_frames=12)
    chunks = list(tts.stream(frames_per_chunk=frames_per_chunk, **kw))
    assert chunks[0].shape == (frames_per_chunk * SPF,)  # audio starts after the first chunk of frames
    np.testing.assert_array_equal(np.concatenate(chunks), tts.synthesize(frames_per_chunk=frames_per_chunk, **kw))
    whole = tts.synthesize(**kw)
    assert whole.shape == (12 * SPF,) and whole.dtype == np.float32
    assert np.abs(whole).max() <= 1.0
    # Other chunkings of the same frames differ by float rounding only.
    assert np.abs(np.concatenate(chunks) - whole).max() <= 1e-7


def test_stream_auto_chunks(tts):
    # "auto" (the server's): the first frame alone, then chunks of up to AUTO_MAX_CHUNK frames while enough audio
    # is ahead of a real-time listener; the tiny model generates far faster than real time, so it gets there
    from wyoming_qwen3tts.engine import AUTO_MAX_CHUNK

    kw = dict(text="Hello there, how are you?", speaker="vivian", language="english", seed=11, min_frames=40,
              max_frames=40)
    chunks = list(tts.stream(frames_per_chunk="auto", **kw))
    sizes = [len(c) // SPF for c in chunks]
    assert all(len(c) % SPF == 0 for c in chunks) and sum(sizes) == 40
    assert sizes[0] == 1 and max(sizes) == AUTO_MAX_CHUNK
    assert np.abs(np.concatenate(chunks) - tts.synthesize(**kw)).max() <= 1e-7  # same frames, float rounding only


def test_auto_chunk_rule():
    # The rule behind "auto": pending frames wait for one more while the audio ahead covers one more frame's
    # generation plus decoding them all (modelled as unit * (frames + 1)) plus the margin, or while chunks that
    # small cannot keep up with real time.
    from wyoming_qwen3tts.engine import AUTO_MARGIN_S, auto_chunk_due

    frame_s, unit = 0.055, 0.010  # 1-frame chunks keep up: 55 + 20 ms per 80 ms of audio
    need_1 = frame_s + 3 * unit + AUTO_MARGIN_S  # 1 pending: one more frame, then 2 frames decoded in 3 units
    assert not auto_chunk_due(need_1 + 0.001, frame_s, unit, 1)
    assert auto_chunk_due(need_1 - 0.001, frame_s, unit, 1)
    assert auto_chunk_due(need_1 + 0.001, frame_s, unit, 2)  # more pending: more to decode
    assert not auto_chunk_due(need_1 + unit + 0.001, frame_s, unit, 2)
    assert auto_chunk_due(need_1 + 0.001, frame_s + 0.002, unit, 1)  # slower generation
    # 1-frame chunks too slow for real time (62 + 20 ms per 80 ms), 2-frame ones fast enough (124 + 30 per 160):
    # with nothing ahead, one frame waits for a second, two go out
    assert not auto_chunk_due(0.0, 0.062, unit, 1)
    assert auto_chunk_due(0.0, 0.062, unit, 2)
    assert not auto_chunk_due(0.0, 0.075, unit, 3)  # generation alone near real time: up to the largest chunk


@pytest.mark.parametrize("bad", [0, -1, "fast", 2.5])
def test_stream_bad_chunking(tts, bad):
    with pytest.raises(ValueError, match="frames_per_chunk"):
        list(tts.stream(frames_per_chunk=bad, text="Hi.", speaker="vivian", language="english", max_frames=2))


def test_stream_reports_timings(tts):
    st = SynthesisStats()
    list(tts.stream(text="Hi.", speaker="vivian", greedy=True, min_frames=4, max_frames=4, stats=st))
    assert st.frames == 4 and st.first_audio_s is not None and st.first_audio_s <= st.total_s
    assert st.prefill_ms > 0 and st.talker_ms > 0 and st.code_predictor_ms > 0 and st.codec_ms > 0


def test_runaway_guard_stops_and_warns(tts, caplog):
    text = "Hello there."
    n_tokens = len(tts.tokenizer.text_ids(text))
    budget = frame_budget(n_tokens)
    assert budget == int(np.ceil(12.5 * (2.0 + 1.0 * n_tokens)))
    st = SynthesisStats()
    with caplog.at_level(logging.WARNING):
        codes = tts.generate_codes(text=text, speaker="vivian", greedy=True, min_frames=10_000)
        list(tts.iter_frames(text=text, speaker="vivian", greedy=True, min_frames=10_000, stats=st))
    assert codes.shape[0] == budget and st.hit_frame_budget
    assert any("runaway guard" in r.getMessage() for r in caplog.records)
    # An explicit max_frames overrides the guard.
    longer = tts.generate_codes(text=text, speaker="vivian", greedy=True, min_frames=10_000, max_frames=budget + 7)
    assert longer.shape[0] == budget + 7


def run_cli(*args, stdin=None):
    # cwd outside the source tree: `python -m` puts the cwd first on sys.path, and the tests must run the
    # installed package (with its compiled extension), not the sources.
    return subprocess.run([sys.executable, "-m", "wyoming_qwen3tts.synth", *args], input=stdin,
                          capture_output=True, cwd=tempfile.gettempdir())


def test_cli_writes_a_wav_and_prints_the_breakdown(tiny_gguf, tmp_path):
    out = tmp_path / "out.wav"
    r = run_cli("-m", str(tiny_gguf("tiny-17", "f32")), "-t", "Hello there.", "-o", str(out), "--speaker", "vivian",
                "--seed", "3", "--max-frames", "6", "--threads", "1")
    assert r.returncode == 0, r.stderr.decode()
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (24000, 1, "PCM_16", 6 * SPF)
    report = r.stderr.decode()
    for field in ("load", "tokenize", "prefill", "talker", "code predictor", "codec", "total", "real-time factor",
                  "time to first audio", "peak RSS"):
        assert f"{field}:" in report, report


def test_cli_streaming_stdin_and_raw_pcm(tiny_gguf, tmp_path):
    model = str(tiny_gguf("tiny-17", "f32"))
    common = ["--speaker", "vivian", "--seed", "5", "--max-frames", "5", "--threads", "1"]
    whole = tmp_path / "whole.wav"
    streamed = tmp_path / "streamed.wav"
    assert run_cli("-m", model, "-t", "Good morning.", "-o", str(whole), *common).returncode == 0
    r = run_cli("-m", model, "-o", str(streamed), "--stream", *common, stdin=b"Good morning.\n")
    assert r.returncode == 0, r.stderr.decode()
    a, _ = soundfile.read(str(whole), dtype="int16")
    b, _ = soundfile.read(str(streamed), dtype="int16")
    np.testing.assert_array_equal(a, b)
    raw = run_cli("-m", model, "-t", "Good morning.", "-o", "-", "--stream", *common)
    assert raw.returncode == 0
    np.testing.assert_array_equal(np.frombuffer(raw.stdout, dtype="<i2"), a)


def test_cli_errors_are_one_line(tmp_path, tiny_gguf):
    r = run_cli("-m", str(tmp_path / "missing.gguf"), "-t", "x", "-o", str(tmp_path / "o.wav"))
    assert r.returncode == 2 and r.stderr.decode().startswith("error:") and "Traceback" not in r.stderr.decode()
    r = run_cli("-m", str(tiny_gguf("tiny-17", "f32")), "-t", "x", "-o", str(tmp_path / "o.wav"), "--speaker", "zed")
    assert r.returncode == 2 and "valid speakers" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
