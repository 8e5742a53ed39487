"""resolve_model: GGUF files, checkpoint directories (converted once, cached with a sidecar) and Hugging Face
repository ids served from a pre-populated hub cache in the real cache layout. Nothing here reaches the network:
an autouse fixture makes every socket connection / DNS lookup fail and records it."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants as hf_constants  # noqa: E402

from wyoming_qwen3tts import download  # noqa: E402
from wyoming_qwen3tts.download import (  # noqa: E402
    DEFAULT_MODEL, ModelError, default_data_dir, is_repo_id, resolve_model)

REPO = DEFAULT_MODEL
REPO_NAME = REPO.split("/")[1]
REV1 = "1" * 40
REV2 = "2" * 40


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every DNS lookup / connection fails (as with no network) and is recorded; tests assert none happened
    unless they simulate a machine without network on purpose."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError(errno.ENETUNREACH, "network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    # a clean slate whatever the environment running the tests says
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield attempts


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, both in the environment and in huggingface_hub's constant (read once at its import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def count_converts(monkeypatch):
    calls: list[Path] = []
    real = download.convert

    def counting(ckpt, out, qtype, progress=True):
        calls.append(Path(ckpt))
        return real(ckpt, out, qtype, progress=False)

    monkeypatch.setattr(download, "convert", counting)
    return calls


def populate_hub_cache(cache_dir: Path, repo_id: str, ckpt: Path, revision: str, main: bool = True,
                       skip: tuple[str, ...] = ()) -> Path:
    """Lay CKPT's files out as huggingface_hub does: blobs/<sha256> (real copies), snapshots/<revision>/<file>
    relative symlinks to the blobs, refs/main holding the revision (no newline). Returns the snapshot dir."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    snapshot = repo_dir / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for src in sorted(ckpt.rglob("*")):
        rel = src.relative_to(ckpt)
        if src.is_dir() or rel.as_posix() in skip or rel.name == "oracle.safetensors":
            continue
        assert not src.is_symlink(), "the blobs must be real copies"
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        if not (blobs / sha).exists():
            shutil.copyfile(src, blobs / sha)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * len(rel.parts), "..", "blobs", sha))
        assert link.resolve() == (blobs / sha).resolve()
    if main:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def gguf_name(path: Path) -> str:
    """general.name, as the engine reads it (gguf.GGUFReader takes seconds over the 151k-token vocabulary)."""
    from wyoming_qwen3tts import Qwen3TTS

    return Qwen3TTS(path, threads=1).name


def one_sentence(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.endswith("."), msg


# ---------------------------------------------------------------------------------------------------------------
# GGUF files and model strings
# ---------------------------------------------------------------------------------------------------------------

def test_gguf_path_is_returned_unchanged(tiny_gguf, tmp_path, no_network):
    gguf_path = tiny_gguf("tiny-06")
    assert resolve_model(str(gguf_path), tmp_path / "data") == gguf_path
    assert not (tmp_path / "data").exists()  # nothing written
    assert not no_network


def test_missing_gguf_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "model-q8_0.gguf"
    with pytest.raises(ModelError, match="model file not found") as ei:
        resolve_model(str(missing), tmp_path / "data")
    assert str(missing) in str(ei.value)
    one_sentence(str(ei.value))


def test_a_file_that_is_not_a_gguf(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(f), tmp_path / "data")


@pytest.mark.parametrize("model", ["", "not a model!", "a/b/c", "owner/", "/name", "-x/y", "x/y-", "a--b/c", "a/b..c",
                                   "Qwen/Qwen3 TTS", " "])
def test_garbage_model_string(tmp_path, model, no_network):
    expected = "no model given" if not model.strip() else "neither a file, a directory nor a Hugging Face repository id"
    with pytest.raises(ModelError, match=expected) as ei:
        resolve_model(model, tmp_path / "data")
    one_sentence(str(ei.value))
    assert not no_network
    assert not (tmp_path / "data").exists()


def test_repo_id_regex():
    for ok in (DEFAULT_MODEL, "Qwen/Qwen3-TTS-12Hz-1.7B-Base", "a/b", "user_1/model.v2"):
        assert is_repo_id(ok), ok
    for bad in ("Qwen3-TTS", "a/b/c", "./a/b", "a/b/", "a b/c", "a/" + "x" * 97, "a/.b", "ü/x"):
        assert not is_repo_id(bad), bad


def test_unknown_quant(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelError, match="unknown quantization 'q3'"):
        resolve_model(str(tiny_checkpoint("tiny-06")), tmp_path, "q3")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "wyoming-qwen3tts"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in (None, "", "relative/dir"):  # unset, empty and relative values are ignored (XDG spec)
        if value is None:
            monkeypatch.delenv("XDG_DATA_HOME")
        else:
            monkeypatch.setenv("XDG_DATA_HOME", value)
        assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "wyoming-qwen3tts"
    assert download.DEFAULT_MODEL == "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"


# ---------------------------------------------------------------------------------------------------------------
# checkpoint directories: convert once, reconvert when the checkpoint changes
# ---------------------------------------------------------------------------------------------------------------

def test_checkpoint_dir_converts_once(tiny_checkpoint, tmp_path, count_converts, no_network):
    ckpt = tiny_checkpoint("tiny-06")
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data)  # default quant q8_0
    assert out == data / "models" / "tiny-06-q8_0.gguf"
    assert out.is_file() and len(count_converts) == 1
    assert gguf_name(out) == "tiny-06"
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["source"] == str(ckpt.resolve()) and sidecar["quant"] == "q8_0"
    assert sidecar["gguf_size"] == out.stat().st_size
    from wyoming_qwen3tts import __version__
    assert sidecar["version"] == __version__
    assert set(sidecar["files"]) == {"config.json", "model.safetensors", "speech_tokenizer/model.safetensors"}
    st = (ckpt / "model.safetensors").stat()
    assert sidecar["files"]["model.safetensors"] == [st.st_size, st.st_mtime_ns]

    mtime = out.stat().st_mtime_ns
    assert resolve_model(str(ckpt), data) == out
    assert len(count_converts) == 1 and out.stat().st_mtime_ns == mtime
    # another quant is another file; the first one stays cached
    out_f32 = resolve_model(str(ckpt), data, "F32")
    assert out_f32 == data / "models" / "tiny-06-f32.gguf" and len(count_converts) == 2
    assert resolve_model(str(ckpt), data) == out and len(count_converts) == 2
    # only the GGUFs, their sidecars and the lock files: no temporary files left
    names = sorted(p.name for p in (data / "models").iterdir() if not p.name.endswith(".lock"))
    assert names == ["tiny-06-f32.gguf", "tiny-06-f32.gguf.json", "tiny-06-q8_0.gguf", "tiny-06-q8_0.gguf.json"]
    assert not no_network


def test_changed_checkpoint_reconverts(tiny_checkpoint, tmp_path, count_converts):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data, "f32")
    assert len(count_converts) == 1
    for changed in ("model.safetensors", "speech_tokenizer/model.safetensors", "config.json"):
        f = ckpt / changed
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # "touch"
        n = len(count_converts)
        assert resolve_model(str(ckpt), data, "f32") == out
        assert len(count_converts) == n + 1, changed
        assert resolve_model(str(ckpt), data, "f32") == out and len(count_converts) == n + 1
    # a change of content (and size) with the mtime put back
    f = ckpt / "config.json"
    st = f.stat()
    f.write_text(f.read_text() + "\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    resolve_model(str(ckpt), data, "f32")
    assert len(count_converts) == 5


def test_moved_checkpoint_reconverts(tiny_checkpoint, tmp_path, count_converts):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data, "f32")
    other = tmp_path / "elsewhere" / "tiny-06"
    other.parent.mkdir()
    shutil.copytree(ckpt, other)  # same name, other source path
    assert resolve_model(str(other), data, "f32") == out
    assert len(count_converts) == 2


def test_stale_sidecar_reconverts(tiny_checkpoint, tmp_path, count_converts):
    from wyoming_qwen3tts import Qwen3TTS

    ckpt = tiny_checkpoint("tiny-06")
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data, "f32")
    sidecar = out.with_name(out.name + ".json")
    record = json.loads(sidecar.read_text())
    del record["gguf_verified"]  # a new file each time: its own inode and times
    damages = ["garbage", "not-a-dict", "other-version", "other-quant", "other-source", "missing", "gguf-missing",
               "gguf-truncated"]
    for i, damage in enumerate(damages, start=2):
        if damage == "garbage":
            sidecar.write_bytes(b"\x00not json{")
        elif damage == "not-a-dict":
            sidecar.write_text("[1, 2]")
        elif damage.startswith("other-"):
            key = damage.split("-")[1]
            sidecar.write_text(json.dumps(dict(record, **{key: {"version": "0.0.0", "quant": "q8_0",
                                                                 "source": "/elsewhere/tiny-06"}[key]})))
        elif damage == "missing":
            sidecar.unlink()
        elif damage == "gguf-missing":
            out.unlink()
        elif damage == "gguf-truncated":
            with open(out, "r+b") as f:
                f.truncate(out.stat().st_size // 2)
        assert resolve_model(str(ckpt), data, "f32") == out
        assert len(count_converts) == i, damage
        stored = json.loads(sidecar.read_text())
        assert stored.pop("gguf_verified") == download._gguf_status(out.stat())
        assert stored == record | {"gguf_size": out.stat().st_size}
    assert Qwen3TTS(out, threads=1).name == "tiny-06"


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_crash_mid_conversion_leaves_nothing_that_looks_valid(tiny_checkpoint, tmp_path, monkeypatch, crash):
    ckpt = tiny_checkpoint("tiny-06")
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data, "f32")  # a valid cached conversion ...
    st = (ckpt / "config.json").stat()
    real = download.convert

    def crashing(ckpt_dir, out_path, qtype, progress=True):
        real(ckpt_dir, out_path, qtype, progress=False)  # a complete temporary file, then a crash
        Path(str(out_path) + ".part").write_bytes(b"GGUF half")
        raise crash("boom")

    # ... whose checkpoint changes, then the reconversion crashes
    monkeypatch.setattr(download, "convert", crashing)
    os.utime(ckpt / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    try:
        with pytest.raises(crash):
            resolve_model(str(ckpt), data, "f32")
    finally:
        os.utime(ckpt / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns))  # the fixture is shared
    assert sorted(p.name for p in (data / "models").iterdir()) == [".tiny-06-f32.gguf.lock"]
    # a crash of another process leaves temporary files behind: they are cleaned up, never used
    (data / "models" / "tiny-06-f32.gguf.999999.tmp").write_bytes(b"GGUF")
    (data / "models" / "tiny-06-f32.gguf.999999.tmp.part").write_bytes(b"GGUF")
    monkeypatch.setattr(download, "convert", real)
    assert resolve_model(str(ckpt), data, "f32") == out
    names = sorted(p.name for p in (data / "models").iterdir() if not p.name.endswith(".lock"))
    assert names == ["tiny-06-f32.gguf", "tiny-06-f32.gguf.json"]


def test_conversion_error_is_one_sentence(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    (ckpt / "vocab.json").unlink()
    data = tmp_path / "data"
    with pytest.raises(ModelError, match=r"cannot convert .*tiny-06.*vocab\.json is missing") as ei:
        resolve_model(str(ckpt), data, "f32")
    one_sentence(str(ei.value))
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert not list((data / "models").glob("tiny-06-f32.gguf*"))


def test_unwritable_data_dir(tiny_checkpoint, tmp_path, no_network):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ModelError, match="cannot write to the models directory .*--data-dir") as ei:
        resolve_model(str(tiny_checkpoint("tiny-06")), blocker / "data", "f32")
    one_sentence(str(ei.value))
    with pytest.raises(ModelError, match="cannot create the download directory .*--data-dir"):
        resolve_model(REPO, blocker / "data", "f32")
    assert not no_network


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face repository ids, from a pre-populated hub cache
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def hub_data(tiny_checkpoint, tmp_path):
    """A data dir whose huggingface/ cache holds REPO at revision REV1, made from the tiny-06 checkpoint."""
    data = tmp_path / "data"
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    snapshot = populate_hub_cache(data / "huggingface", REPO, ckpt, REV1)
    return data, ckpt, snapshot


def test_repo_from_cache_local_files_only(hub_data, count_converts, no_network):
    from wyoming_qwen3tts import Qwen3TTS

    data, ckpt, snapshot = hub_data
    out = resolve_model(REPO, data, "f32", local_files_only=True)
    assert out == data / "models" / f"{REPO_NAME}-f32.gguf"
    assert count_converts == [snapshot]
    tts = Qwen3TTS(out, threads=1)
    assert tts.name == REPO_NAME
    assert tts.speakers  # a usable CustomVoice-style model
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["repo_id"] == REPO and sidecar["revision"] == REV1 and sidecar["source"] == str(snapshot)
    # cached: not converted again
    assert resolve_model(REPO, data, "f32", local_files_only=True) == out
    assert len(count_converts) == 1
    # a new revision (refs/main moves) is converted again
    populate_hub_cache(data / "huggingface", REPO, ckpt, REV2)
    assert resolve_model(REPO, data, "f32", local_files_only=True) == out
    assert len(count_converts) == 2
    assert json.loads(out.with_name(out.name + ".json").read_text())["revision"] == REV2
    assert not no_network


def test_repo_from_cache_with_hf_hub_offline(hub_data, offline, count_converts, no_network):
    data, _, snapshot = hub_data
    out = resolve_model(REPO, data, "f32", local_files_only=False)
    assert out == data / "models" / f"{REPO_NAME}-f32.gguf" and count_converts == [snapshot]
    assert gguf_name(out) == REPO_NAME
    assert resolve_model(REPO, data, "f32") == out and len(count_converts) == 1
    assert not no_network


def test_hf_hub_offline_set_after_huggingface_hub_import(hub_data, monkeypatch, no_network):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; the variable alone still keeps us offline."""
    data, _, _ = hub_data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf_constants.HF_HUB_OFFLINE is False
    assert resolve_model(REPO, data, "f32").is_file()
    assert not no_network


def test_repo_from_cache_without_network(hub_data, no_network):
    """Online mode on a machine without network: huggingface_hub's lookup fails and it falls back to the cache."""
    data, _, snapshot = hub_data
    out = resolve_model(REPO, data, "f32")
    assert gguf_name(out) == REPO_NAME
    assert no_network  # it did try (and the blocked sockets stood in for the missing network)


@pytest.mark.parametrize("how", ["local_files_only", "HF_HUB_OFFLINE", "no-network"])
def test_not_cached_is_one_clear_sentence(tmp_path, monkeypatch, no_network, how):
    data = tmp_path / "data"
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as ei:
        resolve_model(REPO, data, "f32", local_files_only=how == "local_files_only")
    msg = str(ei.value)
    one_sentence(msg)
    assert msg.startswith(f"{REPO} is not in the cache at {data / 'huggingface'} and cannot be downloaded")
    assert "pass --model with a local path" in msg
    assert {"local_files_only": "offline mode", "HF_HUB_OFFLINE": "HF_HUB_OFFLINE is set",
            "no-network": "no network connection?"}[how] in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert bool(no_network) == (how == "no-network")
    assert not (data / "models").exists()


def test_other_repo_not_cached(hub_data, offline):
    data, _, _ = hub_data
    with pytest.raises(ModelError, match="Qwen/Qwen3-TTS-12Hz-1.7B-Base is not in the cache"):
        resolve_model("Qwen/Qwen3-TTS-12Hz-1.7B-Base", data, "f32")


def test_incomplete_cache(tiny_checkpoint, tmp_path, offline):
    data = tmp_path / "data"
    populate_hub_cache(data / "huggingface", REPO, tiny_checkpoint("tiny-06", copy=True), REV1,
                       skip=("speech_tokenizer/model.safetensors",))
    with pytest.raises(ModelError, match="is incomplete .*speech_tokenizer/model.safetensors") as ei:
        resolve_model(REPO, data, "f32")
    one_sentence(str(ei.value))


def _fake_response(status: int):
    import requests

    r = requests.Response()
    r.status_code = status
    r.url = f"https://huggingface.co/api/models/{REPO}"
    return r


@pytest.mark.parametrize("error,expected", [
    ("repository-not-found", f"{REPO} does not exist on Hugging Face"),
    ("gated", f"{REPO} is gated on Hugging Face"),
    ("server-error", f"downloading {REPO} failed (500 Server Error"),
    ("permission", "cannot write the download of"),
    ("hub-down-not-cached", f"{REPO} is not in the cache at "),
    ("connection-not-cached", f"{REPO} is not in the cache at "),
])
def test_hub_errors_are_one_sentence(tmp_path, monkeypatch, error, expected):
    """What huggingface_hub raises online (no network here: snapshot_download is replaced by a stub raising it)."""
    import requests
    from huggingface_hub import errors

    def stub(repo_id, **kwargs):
        assert kwargs["allow_patterns"] == download.ALLOW_PATTERNS
        assert kwargs["cache_dir"] == str(tmp_path / "data" / "huggingface")
        if error == "repository-not-found":
            raise errors.RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found",
                                                 response=_fake_response(404))
        if error == "gated":
            raise errors.GatedRepoError("403 Client Error.\n\nCannot access gated repo",
                                        response=_fake_response(403))
        if error == "server-error":
            raise errors.HfHubHTTPError("500 Server Error: Internal Server Error for url\nmore",
                                        response=_fake_response(500))
        if error == "hub-down-not-cached":  # what snapshot_download raises after a 5xx with nothing cached
            try:
                raise errors.HfHubHTTPError("504 Server Error: Gateway Time-out", response=_fake_response(504))
            except errors.HfHubHTTPError as cause:
                raise errors.LocalEntryNotFoundError("An error happened while trying to locate the files") from cause
        if error == "connection-not-cached":
            try:
                raise requests.exceptions.ConnectionError("Max retries exceeded")
            except requests.exceptions.ConnectionError as cause:
                raise errors.LocalEntryNotFoundError("An error happened while trying to locate the files") from cause
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "huggingface" / "x"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stub)
    with pytest.raises(ModelError) as ei:
        resolve_model(REPO, tmp_path / "data", "f32")
    assert str(ei.value).startswith(expected), str(ei.value)
    one_sentence(str(ei.value))
    if error == "hub-down-not-cached":
        assert "downloading it failed (504 Server Error: Gateway Time-out)" in str(ei.value)
    if error == "connection-not-cached":
        assert "(no network connection?)" in str(ei.value)


def test_incomplete_snapshot_online(tiny_checkpoint, tmp_path, no_network):
    """Online, but the Hub cannot be reached: huggingface_hub returns the cached snapshot without checking it."""
    data = tmp_path / "data"
    populate_hub_cache(data / "huggingface", REPO, tiny_checkpoint("tiny-06", copy=True), REV1, skip=("vocab.json",))
    with pytest.raises(ModelError, match=r"lacks vocab\.json: it is not a Qwen3-TTS checkpoint, or its download") as ei:
        resolve_model(REPO, data, "f32")
    one_sentence(str(ei.value))
    assert no_network


def test_the_checksum_is_computed_again_only_when_the_file_changed(tiny_checkpoint, tmp_path, monkeypatch,
                                                                   count_converts):
    ckpt = tiny_checkpoint("tiny-06")
    data = tmp_path / "data"
    hashed: list[Path] = []
    real = download._sha256
    monkeypatch.setattr(download, "_sha256", lambda path: hashed.append(Path(path)) or real(path))
    out = resolve_model(str(ckpt), data, "f32")
    assert len(hashed) == 1 and len(count_converts) == 1  # the conversion's own
    for _ in range(3):  # later starts trust the recorded status: no read of the whole file
        assert resolve_model(str(ckpt), data, "f32") == out
    assert len(hashed) == 1
    st = out.stat()
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime changes: verified again, then trusted
    assert resolve_model(str(ckpt), data, "f32") == out and len(hashed) == 2
    assert resolve_model(str(ckpt), data, "f32") == out and len(hashed) == 2
    # A data directory where the status cannot be recorded (read-only; as root no directory is, so the write
    # fails by hand): the cache is still used, and verified at each start.
    sidecar = out.with_name(out.name + ".json")
    real_replace = os.replace

    def read_only(src, dst):
        if Path(dst) == sidecar:
            raise PermissionError(errno.EROFS, "Read-only file system", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    for n in (3, 4):
        assert resolve_model(str(ckpt), data, "f32") == out and len(hashed) == n
    assert json.loads(sidecar.read_text())["gguf_verified"] != download._gguf_status(out.stat())
    assert not list(out.parent.glob("*.tmp"))  # no temporary sidecar left behind
    assert len(count_converts) == 1


def test_a_conversion_damaged_in_place_at_the_same_size_is_converted_again(tiny_checkpoint, tmp_path,
                                                                          count_converts):
    ckpt = tiny_checkpoint("tiny-06")
    data = tmp_path / "data"
    out = resolve_model(str(ckpt), data, "f32")
    good = out.read_bytes()
    st = out.stat()
    with open(out, "r+b") as f:  # flip bytes inside the tensor data, size and mtime unchanged
        f.seek(len(good) - 4096)
        f.write(bytes(b ^ 0xFF for b in good[-4096:-4000]))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert resolve_model(str(ckpt), data, "f32") == out
    assert len(count_converts) == 2 and out.read_bytes() == good
    assert resolve_model(str(ckpt), data, "f32") == out and len(count_converts) == 2  # and then trusted again
