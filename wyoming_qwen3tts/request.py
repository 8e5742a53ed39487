"""One synthesis request, as every caller hands it to the engine: :class:`SynthesisRequest`.

The Wyoming handler and the MQTT bridge build one per sentence, the worker carries it to the engine's thread,
and :meth:`Qwen3TTS.stream <wyoming_qwen3tts.engine.Qwen3TTS.stream>` checks it once, with
:meth:`SynthesisRequest.validate`, against the numbers of the model that will speak it (:class:`ModelLimits`:
its code groups, codebook, text vocabulary, speakers, languages). Input that fails a check raises
:class:`InvalidRequest`, the one error that a client is told is its own; any other exception is the server's.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


# The reference wrapper's hard generation defaults (Qwen3TTSModel._merge_generate_kwargs): what the converter writes
# into a GGUF where the checkpoint's generation_config.json lacks a value, and what the engine uses where a GGUF
# has none.
REFERENCE_GENERATION_DEFAULTS = {
    "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.05,
    "subtalker_do_sample": True, "subtalker_temperature": 0.9, "subtalker_top_k": 50, "subtalker_top_p": 1.0,
    "max_new_tokens": 2048,
}


class InvalidRequest(ValueError):
    """The request cannot be served as it is (bad text, an unknown voice, a value out of range): its message is
    for the client."""


@dataclass(frozen=True)
class ModelLimits:
    """What a request is checked against: the model's own numbers and tables (from its GGUF metadata)."""
    name: str
    model_type: str
    num_code_groups: int          # codes per frame
    codebook_size: int            # codes lie in 0 .. codebook_size - 1
    text_vocab_size: int          # text token ids lie in 0 .. text_vocab_size - 1
    hidden_size: int              # values of a speaker embedding
    speakers: tuple[str, ...]     # built-in speakers, lower-case
    languages: tuple[str, ...]    # the model's language names, "auto" among them
    has_speaker_encoder: bool     # voice cloning possible


@dataclass(frozen=True, eq=False)
class SynthesisRequest:
    """Everything one synthesis depends on. ``None`` means the default: the model's generation defaults for the
    sampling values, the runaway guard for ``max_frames`` (engine.frame_budget), ``auto`` for the language, a
    random seed.

    ``text`` or ``text_ids`` (bare token ids); ``speaker`` (built-in); ``language``; ``instruct`` /
    ``instruct_ids``; ``speaker_embedding`` (x-vector clone); ``ref_codes`` with ``ref_text`` / ``ref_text_ids``
    (ICL clone); ``non_streaming_text`` (None: the reference wrapper's default for the mode); ``greedy`` and the
    sampling values; ``max_frames``; ``min_frames`` (EOS masked until then; default 2); ``seed``; ``record``
    (keep per-step tensors for parity checks); ``forced_codes`` (teacher forcing: int [n, code groups] frames
    that the first n frames take instead of being sampled, the code predictor skipped; the talker still runs and
    records its logits, e.g. to compare weight types over the same codes)."""
    text: str | None = None
    text_ids: Sequence[int] | None = None
    speaker: str | None = None
    language: str | None = None
    instruct: str | None = None
    instruct_ids: Sequence[int] | None = None
    speaker_embedding: np.ndarray | None = None
    ref_codes: np.ndarray | None = None
    ref_text: str | None = None
    ref_text_ids: Sequence[int] | None = None
    non_streaming_text: bool | None = None
    greedy: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    subtalker_temperature: float | None = None
    subtalker_top_k: int | None = None
    subtalker_top_p: float | None = None
    max_frames: int | None = None
    min_frames: int | None = None
    seed: int | None = None
    record: bool = False
    forced_codes: np.ndarray | None = None

    def replace(self, **changes: Any) -> "SynthesisRequest":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------------------------------------- checks
    def validate(self, model: ModelLimits) -> None:
        """Raise :class:`InvalidRequest` naming the first field that ``model`` cannot serve."""
        self._validate_text(model)
        self._validate_voice(model)
        self._validate_sampling()
        if self.forced_codes is not None:
            _check_codes(self.forced_codes, "forced_codes", model, allow_empty=True)

    def _validate_text(self, model: ModelLimits) -> None:
        _check_text_or_ids(self.text, self.text_ids, "text", model, "give", ": nothing to synthesize")
        if self.instruct is not None and self.instruct_ids is not None:
            raise InvalidRequest("give at most one of instruct or instruct_ids")
        _check_type(self.instruct, "a string", "instruct")
        _check_ids(self.instruct_ids, "instruct_ids", model)
        if self.language is not None:
            _check_type(self.language, "a string", "language")
            if self.language.lower() not in model.languages:
                valid = ", ".join(lang for lang in model.languages if "dialect" not in lang)
                raise InvalidRequest(f"unknown language {self.language!r}; valid languages: {valid}")

    def _validate_voice(self, model: ModelLimits) -> None:
        if self.speaker:
            _check_type(self.speaker, "a string", "speaker")
            if self.speaker.lower() not in model.speakers:
                valid = ", ".join(model.speakers) or "none (this model has no built-in speakers)"
                raise InvalidRequest(f"unknown speaker {self.speaker!r}; valid speakers: {valid}")
            if self.speaker_embedding is not None:
                raise InvalidRequest("give either a speaker or a speaker_embedding, not both")
        clone = self.speaker_embedding is not None
        if (clone or self.ref_codes is not None) and not model.has_speaker_encoder:
            raise InvalidRequest(f"voice cloning needs a Base model with a speaker encoder; {model.name} "
                                 f"({model.model_type}) has none")
        if clone:
            embedding = np.asarray(self.speaker_embedding)
            if embedding.size != model.hidden_size:
                raise InvalidRequest(f"speaker_embedding must have {model.hidden_size} values, got {embedding.size}")
            if not np.issubdtype(embedding.dtype, np.number) or not np.all(np.isfinite(embedding)):
                raise InvalidRequest("speaker_embedding must hold finite numbers")
        if self.ref_codes is None:
            if self.ref_text is not None or self.ref_text_ids is not None:
                raise InvalidRequest("ref_text needs ref_codes (ICL cloning)")
            return
        if not clone:
            raise InvalidRequest("ICL cloning (ref_codes) also needs the reference speaker_embedding")
        _check_codes(self.ref_codes, "ref_codes", model, allow_empty=False)
        _check_text_or_ids(self.ref_text, self.ref_text_ids, "ref_text", model, "ICL cloning needs", "")

    def _validate_sampling(self) -> None:
        for name in ("greedy", "record", "non_streaming_text"):
            _check_type(getattr(self, name), "true or false", name)
        for name in ("top_k", "subtalker_top_k", "max_frames", "min_frames", "seed"):
            value = getattr(self, name)
            _check_type(value, "an integer", name)
            if value is not None and name != "seed" and value < 0:
                raise InvalidRequest(f"{name} must be >= 0")
        for name in ("temperature", "subtalker_temperature", "repetition_penalty", "top_p", "subtalker_top_p"):
            value = getattr(self, name)
            _check_type(value, "a number", name)
            if value is None:
                continue
            if name.endswith("top_p") and not 0 < value <= 1:
                raise InvalidRequest(f"{name} must be in (0, 1]")
            if name.endswith("temperature") and not self.greedy and not value > 0:
                raise InvalidRequest(f"{name} must be > 0 when sampling")
            if name == "repetition_penalty" and not value > 0:
                raise InvalidRequest("repetition_penalty must be > 0")


_FLAGS = (bool, np.bool_)


def _check_type(value: Any, kind: str, name: str) -> None:
    """``value`` is None or of ``kind``: "a string", "true or false", "an integer" or "a number" (a bool is no
    number here)."""
    if value is None:
        return
    flag = isinstance(value, _FLAGS)
    ok = {"a string": isinstance(value, str), "true or false": flag,
          "an integer": isinstance(value, numbers.Integral) and not flag,
          "a number": isinstance(value, numbers.Real) and not flag}[kind]
    if not ok:
        raise InvalidRequest(f"{name} must be {kind}, not {type(value).__name__}")


def _check_ids(ids: Sequence[int] | np.ndarray | None, name: str, model: ModelLimits) -> int:
    """How many token ids ``ids`` holds, after checking that each lies in the model's text vocabulary."""
    if ids is None:
        return 0
    arr = np.asarray(ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequest(f"{name} must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= model.text_vocab_size):
        raise InvalidRequest(f"{name} must lie in 0..{model.text_vocab_size - 1}")
    return int(arr.size)


def _check_text_or_ids(text: str | None, ids: Sequence[int] | None, name: str, model: ModelLimits, need: str,
                       empty: str) -> None:
    """Exactly one of a text (``name``) and its token ids (``name``_ids), not empty."""
    if (text is None) == (ids is None):
        raise InvalidRequest(f"{need} exactly one of {name} or {name}_ids")
    if text is not None:
        _check_type(text, "a string", name)
        if not text.strip():
            raise InvalidRequest(f"{name} is empty{empty}")
    elif not _check_ids(ids, f"{name}_ids", model):
        raise InvalidRequest(f"{name}_ids is empty{empty}")


def _check_codes(codes: np.ndarray, name: str, model: ModelLimits, allow_empty: bool) -> None:
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] != model.num_code_groups or (arr.shape[0] == 0 and not allow_empty):
        raise InvalidRequest(f"{name} must have shape [frames, {model.num_code_groups}], got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequest(f"{name} must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= model.codebook_size):
        raise InvalidRequest(f"{name} must lie in 0..{model.codebook_size - 1}")


# ------------------------------------------------------------------------------------------ command line
def add_sampling_arguments(parser: argparse.ArgumentParser, max_frames_help: str) -> None:
    """The sampling options of a request (the same for the server and wyoming-qwen3tts-synth); read them back
    with :func:`sampling_options`."""
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--max-frames", type=int, help=max_frames_help)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`SynthesisRequest` fields that the options of :func:`add_sampling_arguments` set."""
    options = dict(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   repetition_penalty=args.repetition_penalty, max_frames=args.max_frames)
    return {k: v for k, v in options.items() if v not in (None, False)}
