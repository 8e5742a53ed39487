"""Voices and languages as Wyoming clients name them.

Home Assistant speaks ISO 639-1 codes (``en``, ``de``, sometimes ``en-US``); the model names its languages
(``english``, ``german``). A voice is what a client picks by name: the model's built-in speakers (CustomVoice)
and the voice library's cloned and designed voices.

Home Assistant never sends a language to a Wyoming TTS server: its voice picker lists, for the pipeline's
language, the voices whose ``languages`` include it, and sends only the voice's name. So every voice also comes
in one variant per language, ``<name>-<iso>`` (``vivian-de``), listed for that language only and spoken in it;
the plain name lists every language and lets the model detect the language from the text (``auto``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine import Qwen3TTS
from .request import InvalidRequest

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
    Raises InvalidRequest naming the valid choices."""
    if code is None or not code.strip():
        return "auto"
    key = code.strip().lower().replace("_", "-")
    if key in supported:
        return key
    name = ISO_TO_MODEL.get(key.split("-")[0])
    if name in supported:
        return name
    valid = ", ".join(["auto"] + [f"{MODEL_TO_ISO.get(s, s)} ({s})" for s in supported if s != "auto"])
    raise InvalidRequest(f"unknown language {code!r}; valid languages: {valid}")


@dataclass(frozen=True)
class Voice:
    name: str
    description: str                                       # starts with the name (Home Assistant shows it)
    languages: list[str]                                   # ISO codes for Wyoming info
    request: dict[str, Any] = field(default_factory=dict)  # engine arguments that select this voice
    language: str | None = None                            # the model language a variant speaks (None: default)


def iso_languages(codes: list[str], supported: list[str], what: str) -> list[str]:
    """ISO codes of the model languages named by ``codes`` (``de``, ``de-DE``, ``german``), in order, without
    duplicates; codes the model does not speak are dropped with a warning naming ``what``."""
    out: list[str] = []
    for code in codes:
        try:
            name = model_language(code, supported)
        except InvalidRequest:
            _LOGGER.warning("%s: unknown language %r ignored", what, code)
            continue
        iso = MODEL_TO_ISO.get(name)
        if iso and iso not in out:
            out.append(iso)
    return out


def library_voices(library: "VoiceLibrary", tts: Qwen3TTS) -> dict[str, Voice]:
    """The usable voices of a voice library, their prompts computed now (or loaded from the cache), so that no
    request ever waits for a reference to be encoded."""
    all_iso = [MODEL_TO_ISO[lang] for lang in tts.languages if lang in MODEL_TO_ISO]
    kind = {"icl": "cloned voice", "xvector": "cloned voice, timbre only", "design": "designed voice"}
    voices = {}
    for name, v in library.scan().items():
        try:
            request = library.request(v)
        except (ValueError, OSError) as e:
            _LOGGER.warning("skipping voice %s: %s", name, e)
            continue
        languages = iso_languages(v.languages, tts.languages, f"voice {name}: voice.json") or all_iso
        description = v.description.strip()
        if not description:
            description = f"{name} ({kind[v.mode]})"
        elif not description.lower().startswith(name.lower()):
            description = f"{name}: {description}"
        voices[name] = Voice(name=name, description=description, languages=languages, request=request)
    return voices


def builtin_voices(tts: Qwen3TTS) -> dict[str, Voice]:
    iso = [MODEL_TO_ISO[lang] for lang in tts.languages if lang in MODEL_TO_ISO]
    return {
        name: Voice(name=name, description=f"{name} (built-in speaker)", languages=iso,
                    request={"speaker": name})
        for name in tts.speakers
    }


def language_variants(voices: dict[str, Voice]) -> dict[str, Voice]:
    """``voices`` followed by one variant per voice and language, ``<name>-<iso>``, listed for that language only
    (see the module). The plain voices are told apart as "any language"; a variant whose name is taken by a real
    voice is left out."""
    out = {}
    for v in voices.values():
        out[v.name] = Voice(name=v.name, description=_with_language(v.description, v.name, "any language"),
                            languages=v.languages, request=v.request, language=v.language)
    for v in voices.values():
        for iso in v.languages:
            name = f"{v.name}-{iso}"
            if name in out:
                _LOGGER.warning("voice %s: no %s variant, the name is taken by another voice", v.name, iso)
                continue
            language = ISO_TO_MODEL[iso]
            out[name] = Voice(name=name, description=_with_language(v.description, v.name, language.capitalize()),
                              languages=[iso], request=v.request, language=language)
    return out


def _with_language(description: str, name: str, language: str) -> str:
    # "vivian (built-in speaker)" -> "vivian (German, built-in speaker)"; "anna: from work" -> "anna (German):
    # from work"
    if description[:len(name)].lower() == name.lower():
        head, rest = description[:len(name)], description[len(name):]
    else:
        head, rest = name, f": {description}"
    if rest.startswith(" (") and rest.endswith(")"):
        return f"{head} ({language}, {rest[2:]}"
    return f"{head} ({language}){rest}"


# Names already warned about, so that a client repeating a stale voice or language logs it once (bounded: names
# come from clients).
_WARNED: set[tuple[str, str]] = set()
_MAX_WARNED = 1000


def _warn_once(kind: str, value: str, message: str, *args: Any) -> None:
    key = (kind, value)
    if key in _WARNED:
        return
    if len(_WARNED) < _MAX_WARNED:
        _WARNED.add(key)
    _LOGGER.warning(message, *args)


def voice_request(voices: dict[str, Voice], model_languages: list[str], voice: str | None, language: str | None,
                  default_voice: str | None = None, default_language: str | None = None,
                  fallback: bool = False) -> dict[str, Any]:
    """Engine arguments for a voice name and a language, falling back to the server's defaults (the same rules
    for Wyoming clients and MQTT announcements). The language is the request's, else the voice variant's, else
    the server's default, else ``auto``.

    Unknown names raise InvalidRequest naming the valid choices, or with ``fallback`` (Wyoming clients, which may hold
    a voice name from before the model or the voices changed) are logged once per name and replaced: an unknown
    voice by the default voice, an unknown language by the voice's or the server's default."""
    name = voice or default_voice
    request: dict[str, Any] = {}
    match = _find(voices, name)
    if name and match is None:
        if not fallback or name == default_voice:
            raise InvalidRequest(f"unknown voice {name!r}; available voices: {', '.join(voices) or 'none'}")
        _warn_once("voice", name, "unknown voice %r (the model or the voices changed? reload the Home Assistant "
                   "integration to refresh its list): speaking with the default voice %s instead", name, default_voice)
        match = _find(voices, default_voice)
    if match is not None:
        request.update(match.request)
    fallback_language = (match.language if match else None) or default_language
    try:
        request["language"] = model_language(language or fallback_language, model_languages)
    except InvalidRequest as e:
        if not fallback or not language:
            raise
        _warn_once("language", language, "%s: speaking %s instead", e, fallback_language or "auto")
        request["language"] = model_language(fallback_language, model_languages)
    return request


def _find(voices: dict[str, Voice], name: str | None) -> Voice | None:
    if not name:
        return None
    return voices.get(name) or voices.get(name.lower())
