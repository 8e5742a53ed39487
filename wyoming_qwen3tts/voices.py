"""Voices and languages as Wyoming clients name them.

Home Assistant speaks ISO 639-1 codes (``en``, ``de``, sometimes ``en-US``); the model names its languages
(``english``, ``german``). A voice is what a client picks by name: today the model's built-in speakers
(CustomVoice); the voice library of cloned and designed voices plugs in here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine import Qwen3TTS

if TYPE_CHECKING:
    from .voice_library import VoiceLibrary

_LOGGER = logging.getLogger(__name__)

# The ten languages of the released models.
ISO_TO_MODEL = {
    "en": "english", "zh": "chinese", "de": "german", "fr": "french", "it": "italian",
    "ja": "japanese", "ko": "korean", "pt": "portuguese", "ru": "russian", "es": "spanish",
}
MODEL_TO_ISO = {v: k for k, v in ISO_TO_MODEL.items()}


def model_language(code: str | None, supported: list[str]) -> str:
    """Map a client's language (ISO code, region-tagged code, model name or 'auto') to the model's name.
    Raises ValueError naming the valid choices."""
    if code is None or not code.strip():
        return "auto"
    key = code.strip().lower().replace("_", "-")
    if key in supported:
        return key
    name = ISO_TO_MODEL.get(key.split("-")[0])
    if name in supported:
        return name
    valid = ", ".join(["auto"] + [f"{MODEL_TO_ISO.get(s, s)} ({s})" for s in supported if s != "auto"])
    raise ValueError(f"unknown language {code!r}; valid languages: {valid}")


@dataclass(frozen=True)
class Voice:
    name: str
    description: str
    languages: list[str]                                   # ISO codes for Wyoming info
    request: dict[str, Any] = field(default_factory=dict)  # engine arguments that select this voice


def library_voices(library: "VoiceLibrary", tts: Qwen3TTS) -> dict[str, Voice]:
    """The usable voices of a voice library, their prompts computed now (or loaded from the cache), so that no
    request ever waits for a reference to be encoded."""
    all_iso = [MODEL_TO_ISO[lang] for lang in tts.languages if lang in MODEL_TO_ISO]
    voices = {}
    for name, v in library.scan().items():
        try:
            request = library.request(v)
        except (ValueError, OSError) as e:
            _LOGGER.warning("skipping voice %s: %s", name, e)
            continue
        languages = [code for code in v.languages if code in all_iso] or all_iso
        kind = {"icl": "cloned voice (reference + transcript)", "xvector": "cloned voice", "design": "designed voice"}
        voices[name] = Voice(name=name, description=v.description or kind[v.mode], languages=languages,
                             request=request)
    return voices


def builtin_voices(tts: Qwen3TTS) -> dict[str, Voice]:
    iso = [MODEL_TO_ISO[lang] for lang in tts.languages if lang in MODEL_TO_ISO]
    return {
        name: Voice(name=name, description=f"Qwen3-TTS built-in speaker {name}", languages=iso,
                    request={"speaker": name})
        for name in tts.speakers
    }


def voice_request(voices: dict[str, Voice], model_languages: list[str], voice: str | None, language: str | None,
                  default_voice: str | None = None, default_language: str | None = None) -> dict[str, Any]:
    """Engine arguments for a voice name and a language, falling back to the server's defaults (the same rules
    for Wyoming clients and MQTT announcements). Raises ValueError naming the valid choices."""
    name = voice or default_voice
    request: dict[str, Any] = {}
    if name:
        match = voices.get(name) or voices.get(name.lower())
        if match is None:
            raise ValueError(f"unknown voice {name!r}; available voices: {', '.join(voices) or 'none'}")
        request.update(match.request)
    request["language"] = model_language(language or default_language, model_languages)
    return request
