"""The commands the README documents work as written from the repository root (where `python -m` imports the
source tree, not the installed package): the converter's console script and `python -m ...convert`, the
synthesis CLI and the server's --version. `python -m wyoming_qwen3tts` there either works (a tree with an
in-place built engine) or says in one sentence what to do instead."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def console_script(name: str) -> str:
    assert re.search(rf"^{re.escape(name)} ", README, re.M), f"README no longer documents {name}"
    path = BIN / name
    assert path.is_file(), f"{name} is not installed next to {sys.executable}"
    return str(path)


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "model.gguf"
    r = run([console_script("wyoming-qwen3tts-convert"), str(tiny_checkpoint("tiny-17")), "-o", str(out),
             "--type", "q8_0"])
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_convert_console_script_from_repo_root(converted):
    assert converted.stat().st_size > 0
    assert converted.read_bytes()[:4] == b"GGUF"


def test_python_m_convert_from_repo_root(tiny_checkpoint, tmp_path):
    assert "python -m wyoming_qwen3tts.convert" in README
    out = tmp_path / "m.gguf"
    r = run([sys.executable, "-m", "wyoming_qwen3tts.convert", str(tiny_checkpoint("tiny-17")), "-o", str(out),
             "--type", "f32"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes()[:4] == b"GGUF"


def test_synth_from_repo_root(converted, tmp_path):
    wav = tmp_path / "out.wav"
    r = run([console_script("wyoming-qwen3tts-synth"), "-m", str(converted), "-t", "Hello.", "-o", str(wav),
             "--speaker", "vivian", "--greedy", "--max-frames", "6"])
    assert r.returncode == 0, r.stdout + r.stderr
    audio, rate = soundfile.read(str(wav))
    assert rate == 24000 and 0 < len(audio) <= 6 * 1920 and len(audio) % 1920 == 0  # 80 ms frames


def test_server_version_from_repo_root():
    from wyoming_qwen3tts import __version__

    r = run([console_script("wyoming-qwen3tts"), "--version"], timeout=60)
    assert r.returncode == 0 and __version__ in r.stdout + r.stderr, r.stdout + r.stderr


def test_python_m_server_from_repo_root_works_or_explains():
    r = run([sys.executable, "-m", "wyoming_qwen3tts", "--version"], timeout=60)
    output = r.stdout + r.stderr
    if list((REPO / "wyoming_qwen3tts").glob("_engine*.so")) or os.environ.get("PYTHONPATH"):
        assert r.returncode == 0, output  # a developer's tree with the engine built in place
    else:
        assert r.returncode != 0
        assert "circular import" not in output
        assert "is not in" in output and "wyoming-qwen3tts" in output, output
