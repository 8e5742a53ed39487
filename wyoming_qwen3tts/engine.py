"""The public Python API of the engine: :class:`Qwen3TTS`.

This layer holds the *policy* of the reference wrapper (``qwen_tts.Qwen3TTSModel``): names to ids (speakers,
languages, the dialect override), default text modes and sampling values, dropped instructions, validation
against the model's own tables. The C++ engine only lays out the rows it is given and runs the networks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ._native import _engine
from .gguf_reader import read_gguf_metadata, read_gguf_tensors
from .request import REFERENCE_GENERATION_DEFAULTS, InvalidRequest, ModelLimits, SynthesisRequest
from .tokenizer import TextTokenizer

_LOGGER = logging.getLogger(__name__)

FRAME_RATE = 12.5  # codec frames per second of audio (24000 Hz / 1920 samples)
AUTO_MAX_CHUNK = 4  # stream(frames_per_chunk="auto"): the largest chunk, in frames
AUTO_MARGIN_S = 0.15  # and the audio it keeps ahead of a real-time listener beyond the wait for the next chunk


def auto_chunk_due(ahead_s: float, frame_s: float, decode_unit_s: float, pending: int) -> bool:
    """``stream(frames_per_chunk="auto")``: should the ``pending`` frames (fewer than :data:`AUTO_MAX_CHUNK`) be
    decoded and handed out now? The codec's time for n frames is modelled as ``decode_unit_s * (n + 1)``: a part
    per call (every codec weight is read once per call) about as large as the part per frame (0.6B on two cores:
    1 frame 20.5 ms, 4 frames 50 ms); ``frame_s`` is the generation time per frame.

    They wait for one more frame while the audio a real-time listener has not heard yet (``ahead_s``) covers
    generating it and then decoding them all, with :data:`AUTO_MARGIN_S` to spare. They also wait when chunks
    this small cannot keep up with real time at all (generation plus decoding slower than the audio they make):
    handing them out now would only leave the listener short again at every chunk, while a bigger chunk costs
    less per frame and lets the stream catch up."""
    if ahead_s >= frame_s + decode_unit_s * (pending + 2) + AUTO_MARGIN_S:
        return False
    return pending * frame_s + decode_unit_s * (pending + 1) <= pending / FRAME_RATE


# Runaway guard (Qwen3-TTS sometimes never emits EOS and babbles on): without an explicit max_frames, a request
# may produce at most  FRAME_RATE * (BUDGET_BASE_S + BUDGET_PER_TOKEN_S * text tokens)  frames. Natural speech
# takes about 0.2-0.35 s per Qwen2 token (English ~0.22 s, Chinese ~0.35 s, digits read one by one ~0.3 s); one
# second per token plus two seconds of slack leaves a margin of about 3x for slow speech or a "speak slowly"
# instruction, while a runaway stops within seconds of where the speech should have ended.
BUDGET_BASE_S = 2.0
BUDGET_PER_TOKEN_S = 1.0


def frame_budget(n_text_tokens: int) -> int:
    """The runaway guard's frame limit for a text of n_text_tokens tokens (see BUDGET_PER_TOKEN_S)."""
    return int(math.ceil(FRAME_RATE * (BUDGET_BASE_S + BUDGET_PER_TOKEN_S * n_text_tokens)))



@dataclass
class SynthesisStats:
    """Where the time of one request went (filled in by :meth:`Qwen3TTS.stream`)."""
    tokenize_ms: float = 0.0
    prefill_ms: float = 0.0
    talker_ms: float = 0.0
    code_predictor_ms: float = 0.0
    codec_ms: float = 0.0
    frames: int = 0
    first_audio_s: float | None = None  # from the call to the first PCM chunk
    total_s: float = 0.0
    hit_frame_budget: bool = False
    reference_frames: int = 0                      # ICL: frames of the reference decoded before the output
    reference_tail: np.ndarray | None = None       # ICL: the last frame of the reference's own audio

    @property
    def audio_s(self) -> float:
        return self.frames / FRAME_RATE

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_s if self.frames else float("nan")


@dataclass(frozen=True)
class Speaker:
    name: str
    codec_id: int
    dialect: str | None  # the language key it forces for chinese/auto, e.g. "beijing_dialect"


class Qwen3TTS:
    """A Qwen3-TTS model loaded from one GGUF file (see docs/gguf.md)."""

    def __init__(self, model_path: str | os.PathLike[str], threads: int | None = None):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        try:
            meta = read_gguf_metadata(self.model_path)
        except ValueError as e:
            raise ValueError(f"cannot read {self.model_path}: {e}") from None
        if meta.get("general.architecture") != "qwen3-tts":
            raise ValueError(f"{self.model_path} is not a qwen3-tts GGUF "
                             f"(architecture {meta.get('general.architecture')!r})")
        self._meta = meta
        self.model_type: str = meta["qwen3-tts.model_type"]
        self.model_size: str = meta.get("qwen3-tts.model_size", "")
        self.name: str = meta.get("general.name", self.model_path.stem)

        self._language_ids = dict(zip(meta.get("qwen3-tts.languages", []), meta.get("qwen3-tts.language_ids", [])))
        self._speakers = {
            name: Speaker(name, int(cid), dialect or None)
            for name, cid, dialect in zip(meta.get("qwen3-tts.speakers", []), meta.get("qwen3-tts.speaker_ids", []),
                                          meta.get("qwen3-tts.speaker_dialects", []))
        }
        self._codec_ids = {k: int(meta[f"qwen3-tts.talker.codec.{k}_id"])
                           for k in ("pad", "bos", "eos", "think", "nothink", "think_bos", "think_eos")}
        self.generation_defaults = {
            k: meta.get(f"qwen3-tts.generation.{k}", v) for k, v in REFERENCE_GENERATION_DEFAULTS.items()
        }
        # The engine loads (mmap, packing the weights; without the GIL) while this thread builds the tokenizer:
        # each takes about half a second for a 0.6B model.
        with ThreadPoolExecutor(1, thread_name_prefix="qwen3tts-load") as loader:
            engine_model = loader.submit(_engine.Model, str(self.model_path), threads or 0)
            self.tokenizer = TextTokenizer.from_metadata(meta)
            text_vocab_size = int(meta["qwen3-tts.talker.text_vocab_size"])
            if self.tokenizer.vocab_size > text_vocab_size:  # every id the tokenizer makes must have an embedding
                raise ValueError(f"{self.model_path}: the tokenizer has {self.tokenizer.vocab_size} tokens, the "
                                 f"talker's text vocabulary only {text_vocab_size}")
            self._model = engine_model.result()
        self.threads = threads or os.cpu_count() or 1
        codec = _engine.codec_info(self._model)
        self.sample_rate: int = codec["sample_rate"]
        self.samples_per_frame: int = codec["samples_per_frame"]
        self.limits = ModelLimits(
            name=self.name, model_type=self.model_type,
            num_code_groups=int(meta["qwen3-tts.talker.num_code_groups"]),
            codebook_size=int(meta["qwen3-tts.code_predictor.vocab_size"]), text_vocab_size=text_vocab_size,
            hidden_size=self._model.hidden_size, speakers=tuple(self._speakers),
            languages=("auto", *self._language_ids), has_speaker_encoder=self._model.has_speaker_encoder)

    # ---------------------------------------------------------------------------------------------- tables
    @property
    def speakers(self) -> list[str]:
        """Built-in speakers (CustomVoice models), lower-case."""
        return list(self._speakers)

    @property
    def languages(self) -> list[str]:
        """Supported languages as the reference wrapper lists them: ``auto`` plus every non-dialect entry."""
        return ["auto"] + [k for k in self._language_ids if "dialect" not in k]

    @property
    def has_speaker_encoder(self) -> bool:
        return self._model.has_speaker_encoder

    @property
    def hidden_size(self) -> int:
        return self._model.hidden_size

    def any_voice(self) -> dict[str, Any]:
        """Request fields of a voice this model speaks without a voice library (for warm-ups and timings): its
        first built-in speaker, or for a Base model a neutral x-vector (zeros)."""
        if self.speakers:
            return {"speaker": self.speakers[0]}
        if self.has_speaker_encoder:
            return {"speaker_embedding": np.zeros(self.hidden_size, np.float32)}
        return {}

    @staticmethod
    def system_info() -> str:
        """The ggml version, backend and CPU features the engine runs with, and its ISA level."""
        return _engine.system_info()

    @staticmethod
    def isa_level(best: bool = False) -> str:
        """The instruction-set level the engine's kernels run at ("amx", "avx512", "avx2", "neon", "generic"):
        the CPU's best unless the environment variable QWEN3TTS_ISA lowers it (read once per process); with
        best=True, the best level this CPU executes."""
        return _engine.isa_level(best)

    @property
    def kernels(self) -> str:
        """How the talker and the code predictor run on this CPU (fused layers on packed weights, or ggml's
        graph), e.g. for a debug log."""
        return self._model.kernels

    def set_threads(self, threads: int) -> None:
        self._model.set_threads(threads)
        self.threads = threads

    # ---------------------------------------------------------------------------------------- generation
    def open_session(self, request: SynthesisRequest | None = None, **fields: Any) -> "_engine.Session":
        """Validate the request, lay out the prompt and prefill the talker; returns the engine session (its
        next_frame() yields frames). Most callers want :meth:`iter_frames`, :meth:`generate_codes`,
        :meth:`stream` or :meth:`synthesize`, which take the same arguments: a :class:`SynthesisRequest`, or its
        fields as keywords (with a request: fields that replace its own)."""
        return self._open(_as_request(request, fields))[0]

    def _open(self, request: SynthesisRequest) -> tuple["_engine.Session", int, bool, float]:
        """Returns (session, frame cap, whether the cap is the runaway guard, tokenize ms)."""
        t0 = time.perf_counter()
        request.validate(self.limits)
        tok = self.tokenizer
        # a leading newline would merge with the template's "\n" (model.md 4.1 slicing)
        text_ids = tok.text_ids(request.text.strip()) if request.text is not None else _id_list(request.text_ids)
        spk = self._speakers[request.speaker.lower()] if request.speaker else None
        clone = request.speaker_embedding is not None
        ref_text_ids = None
        if request.ref_codes is not None:
            ref_text_ids = (tok.ref_text_ids(request.ref_text.strip()) if request.ref_text is not None
                            else _id_list(request.ref_text_ids))
        codec_prefix = self._codec_prefix(request.language, spk)
        instruct_ids = self._instruct_ids(request)
        max_frames, guarded = self._frame_cap(request.max_frames, len(text_ids))
        # the wrapper's defaults are non-streaming text for CustomVoice/VoiceDesign, streaming for clones
        non_streaming_text = not clone if request.non_streaming_text is None else request.non_streaming_text
        tokenize_ms = (time.perf_counter() - t0) * 1000
        session = _engine.Session(
            self._model, role_ids=tok.role_ids(), text_ids=text_ids, codec_prefix=codec_prefix,
            instruct_ids=instruct_ids, speaker_codec_id=spk.codec_id if spk else -1,
            speaker_embedding=(np.asarray(request.speaker_embedding, dtype=np.float32).reshape(-1) if clone
                               else None),
            ref_text_ids=ref_text_ids, ref_codes=request.ref_codes, non_streaming_text=bool(non_streaming_text),
            max_frames=max_frames, record=request.record, forced_codes=request.forced_codes,
            **self._sampling(request))
        return session, max_frames, guarded, tokenize_ms

    def _codec_prefix(self, language: str | None, spk: Speaker | None) -> list[int]:
        """The codec's think/language prefix, with the dialect override of the reference (eric/dylan speak their
        dialect for chinese and auto)."""
        lang = (language or "auto").lower()
        lang_id = None if lang == "auto" else int(self._language_ids[lang])
        if spk is not None and spk.dialect and lang in ("chinese", "auto"):
            if spk.dialect not in self._language_ids:
                raise InvalidRequest(f"speaker {spk.name} needs language {spk.dialect!r}, which this model lacks")
            lang_id = int(self._language_ids[spk.dialect])
        c = self._codec_ids
        return ([c["nothink"], c["think_bos"], c["think_eos"]] if lang_id is None
                else [c["think"], c["think_bos"], lang_id, c["think_eos"]])

    def _instruct_ids(self, request: SynthesisRequest) -> list[int] | None:
        if request.instruct is not None:
            instruct = request.instruct.strip()
            instruct_ids = self.tokenizer.instruct_ids(instruct) if instruct else None
        else:
            instruct_ids = _id_list(request.instruct_ids) if request.instruct_ids is not None else None
        if instruct_ids and self.model_type == "custom_voice" and self.model_size == "0b6":
            _LOGGER.warning("0.6B CustomVoice models ignore instructions (as the reference does); dropped")
            return None
        return instruct_ids or None

    def _frame_cap(self, max_frames: int | None, n_text_tokens: int) -> tuple[int, bool]:
        """The request's frame cap, or without one the runaway guard's; and whether it is the guard's."""
        if max_frames is not None:
            return int(max_frames), False
        # max_new_tokens = N gives at most N-1 frames (model.md 4.6)
        return min(frame_budget(n_text_tokens), int(self.generation_defaults["max_new_tokens"]) - 1), True

    def _sampling(self, request: SynthesisRequest) -> dict[str, Any]:
        """The engine's sampling arguments: the request's values, else the model's generation defaults."""
        g = self.generation_defaults
        seed = int.from_bytes(os.urandom(8), "little") if request.seed is None else int(request.seed)
        return dict(
            do_sample=False if request.greedy else bool(g["do_sample"]),
            temperature=_pick(request.temperature, g["temperature"]), top_k=int(_pick(request.top_k, g["top_k"])),
            top_p=_pick(request.top_p, g["top_p"]),
            repetition_penalty=_pick(request.repetition_penalty, g["repetition_penalty"]),
            sub_do_sample=False if request.greedy else bool(g["subtalker_do_sample"]),
            sub_temperature=_pick(request.subtalker_temperature, g["subtalker_temperature"]),
            sub_top_k=int(_pick(request.subtalker_top_k, g["subtalker_top_k"])),
            sub_top_p=_pick(request.subtalker_top_p, g["subtalker_top_p"]),
            min_frames=2 if request.min_frames is None else int(request.min_frames),  # the reference's min_new_tokens
            seed=seed & (2**64 - 1))

    def iter_frames(self, request: SynthesisRequest | None = None, *, stats: SynthesisStats | None = None,
                    **fields: Any) -> Iterator[np.ndarray]:
        """Yield one int32 [16] frame at a time. Stop iterating (or close the generator) to cancel: the
        engine does no work beyond the frame last asked for. Arguments as :meth:`open_session`."""
        yield from self._frames(self._open(_as_request(request, fields)), stats)

    def _frames(self, opened: tuple["_engine.Session", int, bool, float],
                stats: SynthesisStats | None) -> Iterator[np.ndarray]:
        """The frames of a session that :meth:`_open` returned, with the request's statistics."""
        session, max_frames, guarded, tokenize_ms = opened
        if stats is not None:
            stats.tokenize_ms = tokenize_ms
        n = 0
        try:
            while True:
                frame = session.next_frame()
                if frame is None:
                    break
                n += 1
                if stats is not None:
                    stats.frames = n  # live, for a caller watching from another thread
                yield frame
        finally:
            if stats is not None:
                t = session.timings()
                stats.prefill_ms, stats.talker_ms, stats.code_predictor_ms = (
                    t["prefill"], t["talker"], t["code_predictor"])
                stats.frames = n
        if guarded and n >= max_frames:
            if stats is not None:
                stats.hit_frame_budget = True
            _LOGGER.warning("no end of speech after %d frames (%.1f s): stopped by the runaway guard; pass "
                            "max_frames to change the limit", n, n / FRAME_RATE)

    def stream(self, request: SynthesisRequest | None = None, *, frames_per_chunk: int | str = 1,
               stats: SynthesisStats | None = None, cancel: threading.Event | None = None,
               **fields: Any) -> Iterator[np.ndarray]:
        """Synthesize and yield float32 PCM at :attr:`sample_rate` as it is generated: each chunk is
        frames_per_chunk frames (1920 samples each) decoded by the exact streaming codec decoder, so the first
        chunk comes right after the first frame. Arguments as :meth:`open_session`.

        ``frames_per_chunk="auto"`` (what the server uses): the first frame alone, then chunks of up to
        :data:`AUTO_MAX_CHUNK` frames, but only while the audio already handed out, played in real time from
        the first chunk on, still covers the wait for a bigger chunk with :data:`AUTO_MARGIN_S` to spare, or
        while smaller chunks could not keep up with real time anyway (see :func:`auto_chunk_due`). The codec
        decodes a frame alone in about 1.7x the time per frame it needs in fours (fixed work per call), so this
        raises throughput without letting a listener run dry. Chunk boundaries then depend on timing, which
        changes the samples by float rounding only (see :meth:`synthesize`).

        ICL cloning (``ref_codes``): like the reference, the generated frames are decoded after the reference's
        frames (the decoder's context), whose audio is not part of the output.

        ``cancel`` (for a caller in another thread, e.g. a server whose client went away): once it is set, the
        generator ends after the frame being generated, without decoding the frames still pending."""
        auto = frames_per_chunk == "auto"
        if not auto and (not isinstance(frames_per_chunk, int) or frames_per_chunk < 1):
            raise ValueError("frames_per_chunk must be an integer >= 1 or 'auto'")
        t_start = time.perf_counter()
        st = stats if stats is not None else SynthesisStats()
        request = _as_request(request, fields)
        opened = self._open(request)  # validated before the reference is decoded
        codec = _engine.CodecStream(self._model)
        pending: list[np.ndarray] = []
        ref_codes = request.ref_codes
        if ref_codes is not None:
            t0 = time.perf_counter()
            ref_audio = codec.decode(np.asarray(ref_codes))
            st.codec_ms += (time.perf_counter() - t0) * 1000
            st.reference_frames = int(np.asarray(ref_codes).shape[0])
            st.reference_tail = ref_audio[-self.samples_per_frame:]

        emitted = 0  # frames handed out since the first chunk
        t_first = 0.0
        decode_s = 0.0  # codec time since the first chunk
        decode_unit_s = 0.0  # the last call's codec time / (its frames + 1), see auto_chunk_due

        def flush() -> np.ndarray:
            nonlocal emitted, t_first, decode_s, decode_unit_s
            t0 = time.perf_counter()
            pcm = codec.decode(np.stack(pending))
            dt = time.perf_counter() - t0
            st.codec_ms += dt * 1000
            decode_unit_s = dt / (len(pending) + 1)
            if st.first_audio_s is None:
                st.first_audio_s = time.perf_counter() - t_start
                t_first = time.perf_counter()
            else:
                emitted += len(pending)
                decode_s += dt
            pending.clear()
            return pcm

        def due() -> bool:
            if not auto:
                return len(pending) >= frames_per_chunk
            if st.first_audio_s is None or len(pending) >= AUTO_MAX_CHUNK:
                return True
            elapsed = time.perf_counter() - t_first
            ahead = (1 + emitted) / FRAME_RATE - elapsed  # audio a real-time listener has not heard yet
            frame_s = (elapsed - decode_s) / (emitted + len(pending))  # generation time per frame so far
            return auto_chunk_due(ahead, frame_s, decode_unit_s, len(pending))

        frames = self._frames(opened, st)
        try:
            for frame in frames:
                if cancel is not None and cancel.is_set():
                    return
                pending.append(frame)
                if due():
                    yield flush()
            if pending:
                yield flush()
        finally:
            frames.close()
            st.total_s = time.perf_counter() - t_start

    def synthesize(self, request: SynthesisRequest | None = None, *, frames_per_chunk: int = 1,
                   stats: SynthesisStats | None = None, **fields: Any) -> np.ndarray:
        """The whole utterance as float32 PCM at :attr:`sample_rate`: exactly the samples :meth:`stream` yields
        for the same arguments and seed (same frames_per_chunk, default 1). Decoding in larger chunks changes
        the samples by float rounding only (< 1e-7: the attention softmax sums rows of another length).
        Arguments as :meth:`stream`.

        ICL cloning: the reference cuts the reference part at ``int(K / T * T * 1920)`` samples (K reference
        frames, T frames in all, float64), which float rounding sometimes makes one sample short of K * 1920, so
        its output then begins with the last sample of the reference's audio. That needs T, known only at the
        end: this one-shot result reproduces it; the streamed chunks cannot (they start at K * 1920)."""
        st = stats if stats is not None else SynthesisStats()
        chunks = list(self.stream(request, frames_per_chunk=frames_per_chunk, stats=st, **fields))
        wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        if st.reference_tail is not None:
            k = st.reference_frames
            total = k + st.frames
            cut = int(k / max(total, 1) * (total * self.samples_per_frame))  # the reference's arithmetic
            keep = k * self.samples_per_frame - cut
            if keep > 0:
                wav = np.concatenate([st.reference_tail[-keep:], wav])
        return wav

    def prompt_identity(self) -> str:
        """A digest of everything a cloned voice's prompt depends on besides the voice itself: the speaker and
        codec encoders (names, shapes, types, and the first and last 64 KiB of each tensor's data), the codec
        configuration and the text tokenizer. The talker's weight type is not part of it, so every quantisation
        of a model shares cached voices. Reading only the tensors' ends keeps the (unused) encoder paged out."""
        h = hashlib.sha256()
        for key in ("qwen3-tts.codec.config_json", "tokenizer.ggml.pre", "qwen3-tts.tokenizer.pre_regex"):
            h.update(f"{key}={self._meta.get(key)}\n".encode())
        h.update(f"tokens={len(self.tokenizer.tokens)}\n".encode())
        edge = 64 * 1024
        with open(self.model_path, "rb") as f:
            for info in sorted(read_gguf_tensors(self.model_path).values(), key=lambda t: t.name):
                if not info.name.startswith(("spk.", "codec.enc.")):
                    continue
                h.update(f"{info.name} {info.shape} {info.ggml_type} {info.nbytes}\n".encode())
                f.seek(info.offset)
                h.update(f.read(min(edge, info.nbytes)))
                if info.nbytes > edge:
                    f.seek(info.offset + max(edge, info.nbytes - edge))
                    h.update(f.read(edge))
        return h.hexdigest()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes int [frames, 16] -> float32 PCM [frames * 1920], exactly as the reference's
        ``Qwen3TTSTokenizer.decode`` does it (chunks of 300 frames with 25 frames of left context)."""
        return _engine.codec_decode_chunked(self._model, codes, 300, 25)

    def generate_codes(self, request: SynthesisRequest | None = None, **fields: Any) -> np.ndarray:
        """All frames of one utterance as int32 [frames, 16]. Arguments as :meth:`open_session`."""
        frames = list(self.iter_frames(request, **fields))
        if not frames:
            return np.zeros((0, self.limits.num_code_groups), dtype=np.int32)
        return np.stack(frames)

    def speaker_embedding(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """The x-vector (float32 [hidden_size]) of a reference recording, float mono samples at sample_rate:
        resampled to 24 kHz if needed (soxr HQ, as the reference's librosa.resample), log-mel (model.md 5.1), then
        the model's ECAPA-TDNN speaker encoder. Pass it as ``speaker_embedding`` to clone the voice. Raises
        ValueError for a model without a speaker encoder (only Base models have one) or unusable audio, and
        EngineError when the engine fails (e.g. fewer mel frames than the encoder's paddings need)."""
        from . import audio

        if not self.has_speaker_encoder:
            raise ValueError(f"this model has no speaker encoder (only Base models clone voices); {self.name} is "
                             f"{self.model_type}")
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"wav must be mono (1-D), got shape {wav.shape}")
        if int(sample_rate) <= 0:
            raise ValueError(f"invalid sample rate {sample_rate}")
        wav = audio.resample(wav, int(sample_rate), audio.SAMPLE_RATE)
        return _engine.speaker_embedding(self._model, audio.log_mel(wav))

    def encode(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """The codec codes (int32 [frames, 16]) of a reference recording, float mono samples at sample_rate:
        resampled to 24 kHz if needed (as :meth:`speaker_embedding`), then the codec's Mimi encoder half, exactly
        as the reference's ``Qwen3TTSTokenizer.encode`` (ceil(n / 1920) frames of n 24 kHz samples). Pass them as
        ``ref_codes`` (with the transcript as ``ref_text``) for ICL voice cloning. Raises ValueError for a model
        without codec encoder tensors, empty or non-1-D audio, or non-finite samples."""
        if not _engine.codec_has_encoder(self._model):
            raise ValueError(f"{self.name} has no codec encoder (codec.enc.* tensors): it cannot encode "
                             "reference audio; convert the checkpoint again with its full speech tokenizer")
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"wav must be mono (1-D), got shape {wav.shape}")
        if wav.size == 0:
            raise ValueError("the audio to encode is empty")
        if not np.all(np.isfinite(wav)):
            raise ValueError("the audio to encode holds NaN or infinite samples")
        if int(sample_rate) <= 0:
            raise ValueError(f"invalid sample rate {sample_rate}")
        if int(sample_rate) != self.sample_rate:
            from .audio import resample

            wav = resample(wav, int(sample_rate), self.sample_rate)
        return _engine.codec_encode(self._model, wav)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _id_list(ids: Sequence[int] | np.ndarray) -> list[int]:
    return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


def _as_request(request: SynthesisRequest | None, fields: dict[str, Any]) -> SynthesisRequest:
    """The request the generation methods were given: a SynthesisRequest, its fields, or both (the fields
    replace the request's own)."""
    if request is None:
        return SynthesisRequest(**fields)
    return request.replace(**fields) if fields else request


