"""The public Python API of the engine: :class:`Qwen3TTS`.

This layer holds the *policy* of the reference wrapper (``qwen_tts.Qwen3TTSModel``): names to ids (speakers,
languages, the dialect override), default text modes and sampling values, dropped instructions, validation
against the model's own tables. The C++ engine only lays out the rows it is given and runs the networks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ._native import _engine
from .tokenizer import TextTokenizer, read_gguf_metadata

_LOGGER = logging.getLogger(__name__)

NUM_CODE_GROUPS = 16

# The reference wrapper's hard fallbacks (Qwen3TTSModel._merge_generate_kwargs), used where the GGUF has no
# generation defaults.
_GENERATION_FALLBACKS = {
    "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.05,
    "subtalker_do_sample": True, "subtalker_temperature": 0.9, "subtalker_top_k": 50, "subtalker_top_p": 1.0,
    "max_new_tokens": 2048,
}


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
            k: meta.get(f"qwen3-tts.generation.{k}", v) for k, v in _GENERATION_FALLBACKS.items()
        }
        self.tokenizer = TextTokenizer.from_metadata(meta)
        self._model = _engine.Model(str(self.model_path), threads or 0)
        self.threads = threads or os.cpu_count() or 1

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

    @staticmethod
    def system_info() -> str:
        """The ggml version, backend and CPU features the engine runs with."""
        return _engine.system_info()

    def set_threads(self, threads: int) -> None:
        self._model.set_threads(threads)
        self.threads = threads

    # ---------------------------------------------------------------------------------------- generation
    def open_session(self, *, text: str | None = None, text_ids: Sequence[int] | None = None,
                     speaker: str | None = None, language: str | None = None,
                     instruct: str | None = None, instruct_ids: Sequence[int] | None = None,
                     speaker_embedding: np.ndarray | None = None, ref_codes: np.ndarray | None = None,
                     ref_text: str | None = None, ref_text_ids: Sequence[int] | None = None,
                     non_streaming_text: bool | None = None, greedy: bool = False,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     repetition_penalty: float | None = None, subtalker_temperature: float | None = None,
                     subtalker_top_k: int | None = None, subtalker_top_p: float | None = None,
                     max_frames: int | None = None, min_frames: int | None = None, seed: int | None = None,
                     record: bool = False) -> "_engine.Session":
        """Validate the request, lay out the prompt and prefill the talker. Returns the engine session; most
        callers want :meth:`iter_frames` or :meth:`generate_codes` instead."""
        tok = self.tokenizer
        # --- text
        if (text is None) == (text_ids is None):
            raise ValueError("give exactly one of text or text_ids")
        if text is not None:
            text = text.strip()  # a leading newline would merge with the template's "\n" (spec 4.1 slicing)
            if not text:
                raise ValueError("text is empty: nothing to synthesize")
            text_ids = tok.text_ids(text)
        text_ids = self._ids(text_ids, "text_ids")
        if not text_ids:
            raise ValueError("text_ids is empty: nothing to synthesize")

        # --- voice: built-in speaker, or a cloned voice (x-vector, optionally ICL)
        spk: Speaker | None = None
        if speaker:
            spk = self._speakers.get(speaker.lower())
            if spk is None:
                valid = ", ".join(self.speakers) or "none (this model has no built-in speakers)"
                raise ValueError(f"unknown speaker {speaker!r}; valid speakers: {valid}")
            if speaker_embedding is not None:
                raise ValueError("give either a speaker or a speaker_embedding, not both")
        clone = speaker_embedding is not None
        if (clone or ref_codes is not None) and not self.has_speaker_encoder:
            raise ValueError(f"voice cloning needs a Base model with a speaker encoder; {self.name} "
                             f"({self.model_type}) has none")
        if speaker_embedding is not None:
            speaker_embedding = np.asarray(speaker_embedding, dtype=np.float32).reshape(-1)
            if speaker_embedding.size != self.hidden_size:
                raise ValueError(f"speaker_embedding must have {self.hidden_size} values, "
                                 f"got {speaker_embedding.size}")
        if ref_codes is not None:
            if not clone:
                raise ValueError("ICL cloning (ref_codes) also needs the reference speaker_embedding")
            ref_codes = np.asarray(ref_codes)
            if ref_codes.ndim != 2 or ref_codes.shape[1] != NUM_CODE_GROUPS or ref_codes.shape[0] == 0:
                raise ValueError(f"ref_codes must have shape [frames, {NUM_CODE_GROUPS}], got {ref_codes.shape}")
            if ref_codes.min() < 0 or ref_codes.max() > 2047:
                raise ValueError("ref_codes must lie in 0..2047")
            if (ref_text is None) == (ref_text_ids is None):
                raise ValueError("ICL cloning needs exactly one of ref_text or ref_text_ids")
            if ref_text is not None:
                ref_text = ref_text.strip()
                if not ref_text:
                    raise ValueError("ref_text is empty")
                ref_text_ids = tok.ref_text_ids(ref_text)
            ref_text_ids = self._ids(ref_text_ids, "ref_text_ids")
            if not ref_text_ids:
                raise ValueError("ref_text_ids is empty")
        elif ref_text is not None or ref_text_ids is not None:
            raise ValueError("ref_text needs ref_codes (ICL cloning)")

        # --- language, with the dialect override of the reference (eric/dylan speak their dialect for
        # chinese and auto)
        lang = (language or "auto").lower()
        if lang == "auto":
            lang_id = None
        elif lang in self._language_ids:
            lang_id = int(self._language_ids[lang])
        else:
            raise ValueError(f"unknown language {language!r}; valid languages: {', '.join(self.languages)}")
        if spk is not None and spk.dialect and lang in ("chinese", "auto"):
            if spk.dialect not in self._language_ids:
                raise ValueError(f"speaker {spk.name} needs language {spk.dialect!r}, which this model lacks")
            lang_id = int(self._language_ids[spk.dialect])
        c = self._codec_ids
        codec_prefix = ([c["nothink"], c["think_bos"], c["think_eos"]] if lang_id is None
                        else [c["think"], c["think_bos"], lang_id, c["think_eos"]])

        # --- instruction
        if instruct is not None and instruct_ids is not None:
            raise ValueError("give at most one of instruct or instruct_ids")
        if instruct is not None:
            instruct = instruct.strip()
            instruct_ids = tok.instruct_ids(instruct) if instruct else None
        if instruct_ids is not None:
            instruct_ids = self._ids(instruct_ids, "instruct_ids") or None
        if instruct_ids is not None and self.model_type == "custom_voice" and self.model_size == "0b6":
            _LOGGER.warning("0.6B CustomVoice models ignore instructions (as the reference does); dropped")
            instruct_ids = None

        # --- text mode: the wrapper's defaults are non-streaming for CustomVoice/VoiceDesign, streaming for clones
        if non_streaming_text is None:
            non_streaming_text = not clone

        # --- sampling
        g = self.generation_defaults
        max_new_tokens = int(g["max_new_tokens"])
        if max_frames is None:
            max_frames = max_new_tokens - 1  # max_new_tokens = N gives at most N-1 frames (spec 4.6)
        if max_frames < 0:
            raise ValueError("max_frames must be >= 0")
        if min_frames is None:
            min_frames = 2  # the reference's min_new_tokens
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        return _engine.Session(
            self._model, role_ids=tok.role_ids(), text_ids=text_ids, codec_prefix=codec_prefix,
            instruct_ids=instruct_ids, speaker_codec_id=spk.codec_id if spk else -1,
            speaker_embedding=speaker_embedding, ref_text_ids=ref_text_ids if ref_codes is not None else None,
            ref_codes=ref_codes, non_streaming_text=bool(non_streaming_text),
            do_sample=False if greedy else bool(g["do_sample"]),
            temperature=_pick(temperature, g["temperature"]), top_k=int(_pick(top_k, g["top_k"])),
            top_p=_pick(top_p, g["top_p"]), repetition_penalty=_pick(repetition_penalty, g["repetition_penalty"]),
            sub_do_sample=False if greedy else bool(g["subtalker_do_sample"]),
            sub_temperature=_pick(subtalker_temperature, g["subtalker_temperature"]),
            sub_top_k=int(_pick(subtalker_top_k, g["subtalker_top_k"])),
            sub_top_p=_pick(subtalker_top_p, g["subtalker_top_p"]),
            min_frames=int(min_frames), max_frames=int(max_frames), seed=int(seed) & (2**64 - 1), record=record)

    def _ids(self, ids: Sequence[int] | np.ndarray | None, what: str) -> list[int]:
        arr = np.asarray(ids if ids is not None else [], dtype=np.int64).reshape(-1)
        limit = int(self._meta["qwen3-tts.talker.text_vocab_size"])
        if arr.size and (arr.min() < 0 or arr.max() >= limit):
            raise ValueError(f"{what} must lie in 0..{limit - 1}")
        return arr.tolist()

    def iter_frames(self, **kwargs: Any) -> Iterator[np.ndarray]:
        """Yield one int32 [16] frame at a time. Stop iterating (or close the generator) to cancel: the
        engine does no work beyond the frame last asked for."""
        session = self.open_session(**kwargs)
        while True:
            frame = session.next_frame()
            if frame is None:
                return
            yield frame

    def generate_codes(self, **kwargs: Any) -> np.ndarray:
        """All frames of one utterance as int32 [frames, 16]. Arguments as :meth:`open_session`."""
        frames = list(self.iter_frames(**kwargs))
        if not frames:
            return np.zeros((0, NUM_CODE_GROUPS), dtype=np.int32)
        return np.stack(frames)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


