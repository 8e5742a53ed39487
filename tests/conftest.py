"""Shared pytest fixtures.

* ``tiny_checkpoint(name, copy=False) -> Path``: a complete checkpoint directory in the released Hugging Face
  layout, assembled from ``tests/fixtures/<name>/`` (config.json, generation_config.json, model.safetensors,
  oracle.safetensors), plus ``speech_tokenizer/`` holding the shared ``tests/fixtures/speech-tokenizer/``'s
  config.json, preprocessor_config.json and model.safetensors, plus the three text-tokenizer files of the team's
  shared directory ``shared/reference/qwen2-tokenizer/`` (``shared/`` lies beside the repo; it is not part of it).
  The directory is named ``<name>`` (so ``general.name`` of a conversion is ``<name>``). By default it is built
  once per session from symlinks: treat it as read-only. ``copy=True`` returns a fresh, private, writable copy
  (real files) for tests that damage a checkpoint.
* ``tiny_gguf(name, qtype="f32") -> Path``: that checkpoint converted with ``wyoming_qwen3tts.convert`` once per
  (name, type) per session.
* ``broker``: a mosquitto broker on loopback, one per module; ``tts``: the tiny-17 model (f32, one thread).
* ``reference_fixtures -> Path``: the fixture root as the official reference produces it on this machine
  (tests/reference/make_fixtures.py run once per session, ~40 s), or tests/fixtures where the reference is not
  installed. torch's float32 results move by about 1e-5 between CPUs (the reference's own xvector_clone code
  predictor logits differ by 1.06e-5 between an Intel and an AMD machine), as much as the 1e-5 parity tolerance:
  float parity is therefore checked against the reference computed on the same CPU, and test_fixtures_drift.py
  checks that this regeneration equals the committed fixtures within the drift bound.

A missing fixture (checkpoint dir, shared speech tokenizer) or shared text-tokenizer file fails the test that asks
for it.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, REFERENCE_FIXTURES_ENV, Broker

REPO = Path(__file__).resolve().parents[1]
# the real Qwen2 BPE files are not kept in the repo: the team's shared directory, beside the repo root
TEXT_TOKENIZER_DIR = REPO.parent / "shared" / "reference" / "qwen2-tokenizer"
TEXT_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def _assemble(name: str, dest_root: Path, copy: bool) -> Path:
    src = FIXTURES / name
    speech_tokenizer = FIXTURES / "speech-tokenizer"   # one speech tokenizer shared by all tiny checkpoints
    speech_tokenizer_files = ("config.json", "preprocessor_config.json", "model.safetensors")
    if not (src / "config.json").is_file():
        pytest.fail(f"test fixture {src} is missing (regenerate with tests/reference/make_fixtures.py)")
    missing = [f for f in speech_tokenizer_files if not (speech_tokenizer / f).is_file()]
    if missing:
        pytest.fail(f"shared speech tokenizer fixture files missing from {speech_tokenizer}: {missing} "
                    "(regenerate with tests/reference/make_fixtures.py)")
    missing = [f for f in TEXT_TOKENIZER_FILES if not (TEXT_TOKENIZER_DIR / f).is_file()]
    if missing:
        pytest.fail(f"Qwen2 text tokenizer files missing from {TEXT_TOKENIZER_DIR}: {missing}. They are not kept "
                    "in the repo: the team's shared/ directory (with reference/qwen2-tokenizer/) must lie beside "
                    "the repo root.")
    dest = dest_root / name
    dest.mkdir(parents=True)
    (dest / "speech_tokenizer").mkdir()
    entries = [(p, dest / p.name) for p in sorted(src.iterdir()) if p.name != "speech_tokenizer"]
    entries += [(speech_tokenizer / f, dest / "speech_tokenizer" / f) for f in speech_tokenizer_files]
    entries += [(TEXT_TOKENIZER_DIR / f, dest / f) for f in TEXT_TOKENIZER_FILES if not (src / f).exists()]
    for s, d in entries:
        if not copy:
            d.symlink_to(s.resolve(), target_is_directory=s.is_dir())
        elif s.is_dir():
            shutil.copytree(s, d)
        else:
            shutil.copyfile(s, d)
    return dest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    cache: dict[str, Path] = {}

    def make(name: str, copy: bool = False) -> Path:
        if copy:
            return _assemble(name, tmp_path_factory.mktemp(f"ckpt-{name}-copy"), copy=True)
        if name not in cache:
            cache[name] = _assemble(name, tmp_path_factory.mktemp(f"ckpt-{name}"), copy=False)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory):
    cache: dict[tuple[str, str], Path] = {}

    def make(name: str, qtype: str = "f32") -> Path:
        key = (name, qtype)
        if key not in cache:
            from wyoming_qwen3tts.convert import convert

            ckpt = tiny_checkpoint(name)
            out = tmp_path_factory.mktemp("gguf") / f"{name}-{qtype}.gguf"
            cache[key] = convert(ckpt, out, qtype, progress=False)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def reference_fixtures(tmp_path_factory) -> Path:
    if os.environ.get(REFERENCE_FIXTURES_ENV):  # a parent session's regeneration (tests/test_isa.py's children)
        return Path(os.environ[REFERENCE_FIXTURES_ENV])
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("qwen_tts") is None:
        return FIXTURES
    out = tmp_path_factory.mktemp("reference-fixtures")
    generator = Path(__file__).resolve().parent / "reference" / "make_fixtures.py"
    r = subprocess.run([sys.executable, str(generator), "--out", str(out)], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"the reference could not regenerate the fixtures on this machine:\n{r.stdout[-3000:]}"
                    f"\n{r.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def emulated_build() -> Path:
    """scripts/build-emulated's replay programs (this x86-64 machine, the engine's AVX-512 kernels on SIMDe), built
    once per session into build/x86-emulated/ (later builds recompile what changed)."""
    if platform.machine() != "x86_64":
        pytest.skip("SIMDe stands in for x86 intrinsics only")
    out = REPO / "build" / "x86-emulated"
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-emulated"), str(out)], capture_output=True, text=True,
                       timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, f"emulated build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """mosquitto on a loopback port, one per test module (see helpers.Broker)."""
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def tts(tiny_gguf):
    """The tiny-17 model (f32, one thread), for the modules that do not load another."""
    from wyoming_qwen3tts import Qwen3TTS

    return Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1)
