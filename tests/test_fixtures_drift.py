"""The committed tiny fixtures (tests/fixtures/) must match what tests/reference/make_fixtures.py produces
with the pinned reference (qwen-tts 0.1.1 on torch CPU). Needs torch and qwen_tts; skipped without them."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
GENERATOR = REFERENCE_DIR / "make_fixtures.py"


def _require_reference():
    pytest.importorskip("torch")
    # qwen_tts imports sox / onnxruntime / torchaudio at package import (25 Hz tokenizer only); the stubs stand in
    # for them, so only a missing qwen_tts itself skips the test.
    spec = importlib.util.spec_from_file_location("_qwen3tts_reference_stubs", REFERENCE_DIR / "stubs.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    pytest.importorskip("qwen_tts")


def test_fixtures_match_generator():
    _require_reference()
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make_fixtures.py --check exited {proc.returncode}:\n{output}"
