"""Find the GGUF for ``--model``: a GGUF file, a checkpoint directory, or a Hugging Face repository id.

``resolve_model(model, data_dir, quant="q8_0", local_files_only=False, progress=True) -> Path``:

* an existing GGUF file is returned as is;
* an existing directory (a checkpoint in the released Hugging Face layout) is converted once with
  :func:`wyoming_qwen3tts.convert.convert` into ``data_dir/models/<name>-<quant>.gguf``;
* ``owner/name`` is downloaded with ``huggingface_hub.snapshot_download`` into ``data_dir/huggingface`` (the
  standard hub cache layout; only the files the converter reads) and converted the same way into
  ``data_dir/models/<name>-<quant>.gguf``.

A converted GGUF is reused while its sidecar ``<gguf>.json`` matches: the source directory, the size and
``mtime_ns`` of ``config.json``, ``model.safetensors`` and ``speech_tokenizer/model.safetensors``, the quant type,
this package's version, the snapshot revision (for a repository) and the GGUF's own size and SHA-256 (a file damaged
in place, at the same size, is caught at the next start). The checksum is computed again only when the GGUF's
status (size, mtime, ctime, inode, device) differs from the one recorded when it was last verified: any write to the
file, even one that restores its mtime, changes its ctime. Anything else reconverts. Conversion writes a temporary
file that is renamed into place only when complete, and the sidecar is written after that, so an interrupted
conversion never leaves a GGUF that would be reused. Conversions of the same target are serialised with a lock file
(where ``fcntl`` exists).

Every failure is a :class:`ModelError` whose message is one sentence meant for the user.

Offline use: pass ``local_files_only=True`` or set ``HF_HUB_OFFLINE=1``. huggingface_hub reads that variable
once, when it is imported; this module also reads it at each call, so setting it later still keeps the call
off the network.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .convert import QTYPES, ConversionError, checkpoint_name, convert

__all__ = ["DEFAULT_MODEL", "ModelError", "resolve_model", "default_data_dir", "is_repo_id", "ALLOW_PATTERNS"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"

# what the converter reads from a repository (the released repos also hold README, .gitattributes, ...)
ALLOW_PATTERNS = ["config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
                  "tokenizer_config.json", "speech_tokenizer/*"]
# the files without which conversion cannot work (generation_config.json is optional)
_REQUIRED = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
             "speech_tokenizer/config.json", "speech_tokenizer/model.safetensors")
# the files whose (size, mtime_ns) key the conversion cache
_KEY_FILES = ("config.json", "model.safetensors", "speech_tokenizer/model.safetensors")
_SIDECAR_FORMAT = 2  # 2: with the GGUF's SHA-256

# owner/name as the Hub spells them: letters, digits, "-", "_", "."; starting and ending with a letter or digit;
# no "--" or ".." (reserved by the cache layout); at most 96 characters each
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"({_PART})/({_PART})")


class ModelError(Exception):
    """The model cannot be found, downloaded or converted; the message is one sentence for the user."""


def default_data_dir() -> Path:
    """Per-user data directory: ``$XDG_DATA_HOME/wyoming-qwen3tts`` or ``~/.local/share/wyoming-qwen3tts``."""
    xdg = os.path.expanduser(os.environ.get("XDG_DATA_HOME", ""))
    # the XDG spec: a relative value is invalid and ignored
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "wyoming-qwen3tts"


def is_repo_id(model: str) -> bool:
    """Whether MODEL looks like a Hugging Face repository id (``owner/name``)."""
    return bool(_REPO_ID_RE.fullmatch(model)) and "--" not in model and ".." not in model


def resolve_model(model: str, data_dir: str | os.PathLike[str], quant: str = "q8_0", local_files_only: bool = False,
                  progress: bool = True) -> Path:
    """The path of a GGUF the engine can load for MODEL (a .gguf file, a checkpoint directory or ``owner/name``).

    Raises :class:`ModelError`.
    """
    model = str(model)
    if not model.strip():
        raise ModelError(f"no model given; pass a .gguf file, a checkpoint directory or a Hugging Face repository id "
                         f"such as {DEFAULT_MODEL}.")
    quant = str(quant).lower()
    if quant not in QTYPES:
        raise ModelError(f"unknown quantization {quant!r}; choose one of {', '.join(QTYPES)}.")
    data_dir = Path(data_dir).expanduser().absolute()
    path = Path(model).expanduser()

    if path.is_file():
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            return path
        raise ModelError(f"{model} is not a GGUF file; pass a .gguf file, a checkpoint directory or a Hugging Face "
                         f"repository id such as {DEFAULT_MODEL}.")
    if path.is_dir():
        ckpt = path.resolve()
        out = data_dir / "models" / f"{checkpoint_name(ckpt)}-{quant}.gguf"
        return _convert_cached(ckpt, out, quant, {"source": str(ckpt)}, progress, what=str(ckpt))
    if path.suffix.lower() == ".gguf":
        raise ModelError(f"model file not found: {model}.")
    if not is_repo_id(model):
        raise ModelError(f"{model!r} is neither a file, a directory nor a Hugging Face repository id (owner/name).")

    snapshot = _download(model, data_dir / "huggingface", local_files_only, progress)
    out = data_dir / "models" / f"{model.split('/', 1)[1]}-{quant}.gguf"
    ident = {"source": str(snapshot), "repo_id": model, "revision": snapshot.name}
    return _convert_cached(snapshot, out, quant, ident, progress, what=model)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face download
# ---------------------------------------------------------------------------------------------------------------

def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0].strip().rstrip(".") if text else type(e).__name__)


@contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub's progress bars off for the duration when ENABLED is false (restored afterwards)."""
    if enabled:
        yield
        return
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover - other huggingface_hub versions
        yield
        return
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _download(repo_id: str, cache_dir: Path, local_files_only: bool, progress: bool) -> Path:
    """snapshot_download of the converter's files; the snapshot directory. Raises ModelError."""
    try:
        import huggingface_hub
        from huggingface_hub import constants as hf_constants
    except ImportError as e:
        raise ModelError(f"downloading {repo_id} needs the huggingface_hub package ({e}); install it or pass "
                         f"--model with a local path.") from None
    from huggingface_hub import errors as hf_errors

    if local_files_only:
        why = "offline mode was requested"
    elif getattr(hf_constants, "HF_HUB_OFFLINE", False) or _env_offline():
        why = "HF_HUB_OFFLINE is set"
        local_files_only = True  # the env var may have been set after huggingface_hub read it
    else:
        why = "no network connection?"
    not_cached = (f"{repo_id} is not in the cache at {cache_dir} and cannot be downloaded ({why}); download it "
                  f"where there is network access or pass --model with a local path.")

    if not local_files_only:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _not_writable(f"cannot create the download directory {cache_dir}", e) from None
        _LOGGER.info("downloading %s into %s (files already there are not fetched again)", repo_id, cache_dir)
    else:
        _LOGGER.info("looking up %s in the cache at %s (offline)", repo_id, cache_dir)

    local_entry = getattr(hf_errors, "LocalEntryNotFoundError", ())
    gated = getattr(hf_errors, "GatedRepoError", ())
    not_found = getattr(hf_errors, "RepositoryNotFoundError", ())
    revision_not_found = getattr(hf_errors, "RevisionNotFoundError", ())
    http_error = getattr(hf_errors, "HfHubHTTPError", ())
    offline_error = getattr(hf_errors, "OfflineModeIsEnabled", ())
    try:
        with _hub_progress(progress):
            snapshot = huggingface_hub.snapshot_download(
                repo_id, cache_dir=str(cache_dir), local_files_only=local_files_only, allow_patterns=ALLOW_PATTERNS)
    except gated:
        raise ModelError(f"{repo_id} is gated on Hugging Face: accept its terms on huggingface.co and log in "
                         f"(huggingface-cli login or HF_TOKEN), or pass --model with a local path.") from None
    except (not_found, revision_not_found):
        raise ModelError(f"{repo_id} does not exist on Hugging Face (or it is private); check the model name or "
                         f"pass --model with a local path.") from None
    except (local_entry, offline_error) as e:
        cause = e.__cause__
        if not local_files_only and isinstance(cause, http_error):
            # the Hub answered with an error (5xx, 401, ...) and nothing is cached
            raise ModelError(f"{repo_id} is not in the cache at {cache_dir} and downloading it failed "
                             f"({_first_line(cause)}); try again later or pass --model with a local path.") from None
        raise ModelError(not_cached) from None
    except http_error as e:
        raise ModelError(f"downloading {repo_id} failed ({_first_line(e)}); try again later or pass --model with "
                         f"a local path.") from None
    except _network_errors() as e:
        if not _has_snapshot(cache_dir, repo_id):
            raise ModelError(not_cached) from None
        raise ModelError(f"downloading {repo_id} failed ({_first_line(e)}); check the network connection or pass "
                         f"--model with a local path.") from None
    except OSError as e:  # the cache directory: permissions, full disk, ...
        raise ModelError(f"cannot write the download of {repo_id} into {cache_dir}: {e.strerror or _first_line(e)}; "
                         f"pass a writable --data-dir or free some space.") from None

    snapshot = Path(snapshot)
    missing = [f for f in _REQUIRED if not (snapshot / f).is_file()]
    if missing:
        if local_files_only:
            raise ModelError(f"the cached copy of {repo_id} in {cache_dir} is incomplete (it lacks "
                             f"{', '.join(missing)}) and cannot be downloaded ({why}); download it again where "
                             f"there is network access.")
        raise ModelError(f"the copy of {repo_id} in {cache_dir} lacks {', '.join(missing)}: it is not a Qwen3-TTS "
                         f"checkpoint, or its download was cut short (run again with network access).")
    return snapshot


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as raised by huggingface_hub's HTTP stack (requests for 0.x, httpx for 1.x)."""
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests

        errs.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    try:
        import httpx

        errs.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errs)


def _has_snapshot(cache_dir: Path, repo_id: str) -> bool:
    """Whether the hub cache holds any snapshot of REPO_ID."""
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    try:
        return any(snapshots.iterdir())
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Conversion cache
# ---------------------------------------------------------------------------------------------------------------

def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _file_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()  # follows the hub cache's symlinks to the blobs
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _expected_sidecar(ckpt: Path, quant: str, ident: dict) -> dict:
    from . import __version__

    return {"format": _SIDECAR_FORMAT, **ident, "quant": quant, "version": __version__,
            "files": {f: _file_key(ckpt / f) for f in _KEY_FILES}}


def _gguf_status(st: os.stat_result) -> list[int]:
    """What any write to the file changes (ctime even where the writer restores mtime)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _cache_valid(out: Path, expected: dict) -> bool:
    try:
        stored = json.loads(_sidecar_path(out).read_text(encoding="utf-8"))
        st = out.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.pop("gguf_size", None) != st.st_size:
        return False
    checksum = stored.pop("gguf_sha256", None)
    verified = stored.pop("gguf_verified", None)
    if stored != expected or not all(v is not None for v in expected["files"].values()):
        return False
    if verified == _gguf_status(st):
        return True
    # last, as it reads the whole file (which also brings it into the page cache for the engine's mmap)
    if checksum != _sha256(out):
        _LOGGER.warning("the cached conversion %s is damaged (its checksum changed); converting again", out)
        return False
    _record_sidecar(out, dict(expected, gguf_size=st.st_size, gguf_sha256=checksum), st, required=False)
    return True


def _record_sidecar(out: Path, record: dict, hashed: os.stat_result, required: bool = True) -> None:
    """Writes out's sidecar (atomically) with `hashed`, the GGUF's status taken before its checksum was computed:
    a file replaced meanwhile (by another process's conversion) then does not match it and is verified again.
    required=False: a data directory that cannot be written keeps its sidecar (the checksum is then computed at
    every start)."""
    sidecar = _sidecar_path(out)
    side_tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    try:
        record = dict(record, gguf_verified=_gguf_status(hashed))
        side_tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(side_tmp, sidecar)
    except OSError:
        side_tmp.unlink(missing_ok=True)
        if required:
            raise


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _convert_cached(ckpt: Path, out: Path, quant: str, ident: dict, progress: bool, what: str) -> Path:
    expected = _expected_sidecar(ckpt, quant, ident)
    if _cache_valid(out, expected):  # no writes needed: works on a read-only data directory too
        _LOGGER.debug("using the cached conversion %s", out)
        return out
    models = out.parent
    with ExitStack() as stack:
        try:
            models.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_lock(models / f".{out.name}.lock"))
        except OSError as e:
            raise _not_writable(f"cannot write to the models directory {models}", e) from None
        # another process may have converted it while we waited for the lock
        expected = _expected_sidecar(ckpt, quant, ident)
        if _cache_valid(out, expected):
            return out
        sidecar = _sidecar_path(out)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        try:
            for stale in models.glob(f"{glob.escape(out.name)}.*.tmp*"):  # left by a crashed conversion
                stale.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)  # first the sidecar, so a half-replaced cache is never trusted
            out.unlink(missing_ok=True)
        except OSError as e:
            raise _not_writable(f"cannot write to the models directory {models}", e) from None
        _LOGGER.info("converting %s to %s (one time)", what, quant)
        t0 = time.monotonic()
        try:
            convert(ckpt, tmp, quant, progress=progress)
            os.replace(tmp, out)
            st = out.stat()
            size = st.st_size
            _record_sidecar(out, dict(expected, gguf_size=size, gguf_sha256=_sha256(out)), st)
        except ConversionError as e:
            raise ModelError(f"cannot convert {what}: {str(e).rstrip('.')}.") from None
        except OSError as e:
            raise _not_writable(f"cannot write the converted model {out}", e) from None
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".part")):  # (_record_sidecar removes its own)
                try:
                    leftover.unlink(missing_ok=True)
                except OSError:
                    pass
        _LOGGER.info("converted %s to %s (%.0f MB) in %.1f s", what, out, size / 1e6,
                     time.monotonic() - t0)
        return out


def _not_writable(what: str, e: OSError) -> ModelError:
    return ModelError(f"{what}: {e.strerror or e}; pass a writable --data-dir.")
