"""The voice library: a directory of voices, one folder each, and a cache of their computed prompts.

    voices/<name>/ref.wav        reference recording (WAV/FLAC/OGG; any rate, any channels)
    voices/<name>/ref.txt        optional: its transcript -> ICL cloning (x-vector + reference codes + text)
                                 without it: x-vector cloning
    voices/<name>/instruct.txt   instead of ref.*: a designed voice (VoiceDesign models)
    voices/<name>/voice.json     optional: {"languages": ["en", ...], "description": "..."}

Cloning a voice costs a speaker-encoder and a codec-encoder pass over the reference; the result (the voice's
*prompt*: x-vector, reference codes, transcript token ids) is cached in ``cache_dir`` as ``<name>.npz``, keyed by
a hash of the audio bytes, the transcript and the model identity. A changed recording, transcript or model
recomputes it; a cache file that is corrupt, truncated, or made for something else is detected and rebuilt, never
trusted. Writes are atomic (temporary file + rename) and serialised per voice (a thread lock and a file lock), so
two first uses at once compute the prompt once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import audio
from .engine import Qwen3TTS
from .request import InvalidRequest, ModelLimits, SynthesisRequest

_LOGGER = logging.getLogger(__name__)

CACHE_FORMAT = 1
NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class LibraryVoice:
    name: str
    folder: Path
    mode: str                       # "icl", "xvector" or "design"
    languages: list[str] = field(default_factory=list)  # ISO codes from voice.json (empty: all)
    description: str = ""


class VoiceLibrary:
    def __init__(self, voices_dir: str | os.PathLike[str], tts: Qwen3TTS, cache_dir: str | os.PathLike[str] | None = None):
        self.voices_dir = Path(voices_dir)
        self.tts = tts
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.voices_dir / ".cache"
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._model_id: str | None = None

    # ------------------------------------------------------------------------------------------- catalogue
    def scan(self) -> dict[str, LibraryVoice]:
        """The usable voices of the directory, by name. Folders this model cannot use (a designed voice on a
        model without instructions, a cloned voice on a model without a speaker encoder) are skipped with a
        warning."""
        if not self.voices_dir.is_dir():
            raise ValueError(f"voices directory {self.voices_dir} does not exist")
        voices = {}
        for folder in sorted(p for p in self.voices_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                voice = self._describe(folder)
            except ValueError as e:
                _LOGGER.warning("skipping voice %s: %s", folder.name, e)
                continue
            if voice.mode == "design" and self.tts.model_type != "voice_design":
                _LOGGER.warning("skipping voice %s: designed voices need a VoiceDesign model", voice.name)
            elif voice.mode != "design" and not self.tts.has_speaker_encoder:
                _LOGGER.warning("skipping voice %s: cloned voices need a Base model", voice.name)
            else:
                voices[voice.name] = voice
        return voices

    def _describe(self, folder: Path) -> LibraryVoice:
        name = folder.name
        if not set(name) <= NAME_OK:
            raise ValueError("voice folder names may only use letters, digits, '_', '-' and '.'")
        meta: dict[str, Any] = {}
        if (folder / "voice.json").is_file():
            try:
                meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:
                raise ValueError(f"voice.json is not valid JSON: {e}") from None
            except RecursionError:
                raise ValueError("voice.json is nested too deeply") from None
            if not isinstance(meta, dict):
                raise ValueError("voice.json must hold an object")
        languages = meta.get("languages", [])
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise ValueError("voice.json 'languages' must be a list of language codes")
        ref = self._reference(folder)
        if (folder / "instruct.txt").is_file() and ref is None:
            mode = "design"
        elif ref is not None:
            mode = "icl" if (folder / "ref.txt").is_file() else "xvector"
        else:
            raise ValueError("the folder holds neither ref.wav (a cloned voice) nor instruct.txt (a designed voice)")
        return LibraryVoice(name=name, folder=folder, mode=mode, languages=languages,
                            description=str(meta.get("description", "")))

    @staticmethod
    def _reference(folder: Path) -> Path | None:
        for ext in ("wav", "flac", "ogg"):
            if (folder / f"ref.{ext}").is_file():
                return folder / f"ref.{ext}"
        return None

    # ---------------------------------------------------------------------------------------------- prompts
    def request(self, voice: LibraryVoice) -> dict[str, Any]:
        """The engine arguments that make the model speak with this voice (computed once, then cached)."""
        if voice.mode == "design":
            instruct = (voice.folder / "instruct.txt").read_text(encoding="utf-8").strip()
            if not instruct:
                raise ValueError(f"voice {voice.name}: instruct.txt is empty")
            return {"instruct": instruct}
        ref = self._reference(voice.folder)
        assert ref is not None
        audio.check_reference(ref)  # a two-hour recording is refused before it is hashed
        with self._lock(voice.name):
            prompt = self._cached_prompt(voice)
        request: dict[str, Any] = {"speaker_embedding": prompt["x_vector"]}
        if voice.mode == "icl":
            request.update(ref_codes=prompt["ref_codes"], ref_text_ids=prompt["ref_text_ids"].tolist())
        return request

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def model_identity(self) -> str:
        """A hash of what a prompt depends on besides the voice: the speaker encoder, the codec encoder and the
        text tokenizer of this model (not the talker's weight type: every quantisation shares prompts)."""
        if self._model_id is None:
            self._model_id = self.tts.prompt_identity()
        return self._model_id

    def _key(self, voice: LibraryVoice) -> str:
        h = hashlib.sha256()
        h.update(f"format {CACHE_FORMAT}\nmode {voice.mode}\nmodel {self.model_identity()}\n".encode())
        ref = self._reference(voice.folder)
        assert ref is not None
        audio_hash = hashlib.sha256()
        with open(ref, "rb") as f:  # in blocks: the recording is never held in memory whole
            for block in iter(lambda: f.read(1 << 16), b""):
                audio_hash.update(block)
        h.update(audio_hash.digest())
        if voice.mode == "icl":
            h.update((voice.folder / "ref.txt").read_bytes())
        return h.hexdigest()

    def _cached_prompt(self, voice: LibraryVoice) -> dict[str, np.ndarray]:
        key = self._key(voice)
        path = self.cache_dir / f"{voice.name}.npz"
        prompt = self._load(path, key, voice)
        if prompt is not None:
            return prompt
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # A file lock too: two server processes sharing the cache compute a voice once.
            lock_file = open(self.cache_dir / f".{voice.name}.lock", "w")
        except OSError as e:
            _LOGGER.warning("voice %s: cannot use the cache directory %s (%s); encoding it without caching",
                            voice.name, self.cache_dir, e)
            return self._compute(voice)
        with lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            prompt = self._load(path, key, voice)  # another process may have finished it meanwhile
            if prompt is None:
                prompt = self._compute(voice)
                self._store(path, key, voice, prompt)
        return prompt

    def _store(self, path: Path, key: str, voice: LibraryVoice, prompt: dict[str, np.ndarray]) -> None:
        """Write the prompt to the cache atomically; a failure costs the cache, not the voice."""
        tmp = path.with_name(f".{voice.name}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        try:
            if path.is_dir() and not path.is_symlink():  # in the way of the cache file: not ours to keep
                _LOGGER.warning("voice %s: the cache path %s is a directory; replacing it", voice.name, path)
                shutil.rmtree(path)
            np.savez(tmp, key=np.array(key), **prompt)
            os.replace(tmp, path)
        except OSError as e:
            _LOGGER.warning("voice %s: cannot write its cache file %s (%s); it will be encoded again at the next "
                            "start", voice.name, path, e)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _load(self, path: Path, key: str, voice: LibraryVoice) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            expected = _PROMPT_MEMBERS[voice.mode]
            with zipfile.ZipFile(path) as zf:  # look before loading: members are read whole
                members = {info.filename: info.file_size for info in zf.infolist()}
            if set(members) != expected or max(members.values()) > _MAX_MEMBER_BYTES:
                _LOGGER.warning("voice %s: cache file %s holds other or larger members than a prompt; rebuilding it",
                                voice.name, path)
                return None
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            _LOGGER.warning("voice %s: cache file %s is unreadable (%s); rebuilding it", voice.name, path, e)
            return None
        if str(data.get("key", "")) != key:
            _LOGGER.info("voice %s: recording, transcript or model changed; recomputing its prompt", voice.name)
            return None
        if not _valid_prompt(data, self.tts.limits, voice.mode):
            _LOGGER.warning("voice %s: cache file %s does not hold a valid prompt; rebuilding it", voice.name, path)
            return None
        return data

    def _compute(self, voice: LibraryVoice) -> dict[str, np.ndarray]:
        ref = self._reference(voice.folder)
        assert ref is not None
        _LOGGER.info("voice %s: encoding the reference recording (one time)", voice.name)
        wav, sr = audio.load_audio(ref)
        prompt = {"x_vector": np.asarray(self.tts.speaker_embedding(wav, sr), dtype=np.float32)}
        if voice.mode == "icl":
            text = (voice.folder / "ref.txt").read_text(encoding="utf-8").strip()
            if not text:
                raise ValueError(f"voice {voice.name}: ref.txt is empty")
            prompt["ref_codes"] = np.asarray(self.tts.encode(wav, sr), dtype=np.int32)
            prompt["ref_text_ids"] = np.asarray(self.tts.tokenizer.ref_text_ids(text), dtype=np.int32)
        return prompt


# The members of a prompt's .npz file per voice mode, and a bound on each (the largest, ICL reference codes of a
# 60 s recording, is 750 frames x 16 int32 = 48 kB).
_PROMPT_MEMBERS = {"xvector": {"key.npy", "x_vector.npy"},
                   "icl": {"key.npy", "x_vector.npy", "ref_codes.npy", "ref_text_ids.npy"}}
_MAX_MEMBER_BYTES = 4 << 20


def _valid_prompt(data: dict[str, np.ndarray], limits: ModelLimits, mode: str) -> bool:
    """Whether a cached prompt holds what :meth:`VoiceLibrary._encode` writes (a float32 x-vector; for ICL int32
    reference codes and transcript ids) and makes a request the model accepts."""
    x = data.get("x_vector")
    if x is None or x.dtype != np.float32 or x.ndim != 1:
        return False
    request = SynthesisRequest(text=".", speaker_embedding=x)
    if mode == "icl":
        codes, ids = data.get("ref_codes"), data.get("ref_text_ids")
        if codes is None or ids is None or codes.dtype != np.int32 or ids.dtype != np.int32 or ids.ndim != 1:
            return False
        request = request.replace(ref_codes=codes, ref_text_ids=ids)
    try:
        request.validate(limits)
    except InvalidRequest:
        return False
    return True
