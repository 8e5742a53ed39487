"""The committed tiny fixtures (tests/fixtures/) must match what tests/reference/make_fixtures.py produces
with the pinned reference (qwen-tts 0.1.1 on torch CPU). Needs torch and qwen_tts; skipped without them.

The regeneration runs on whatever CPU CI has, so the check must accept float32 rounding differences between CPUs
(torch picks other kernels on AMD / Intel / AVX2 / AVX-512) and still catch a real change of the oracle. The
bound is make_fixtures.py's: per element |committed - regenerated| <= 1e-5 + 1e-5 * |committed|. The tests below
show both sides on a perturbed copy of the committed oracle."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
GENERATOR = REFERENCE_DIR / "make_fixtures.py"
ORACLE = Path(__file__).resolve().parent / "fixtures" / "tiny-17" / "oracle.safetensors"


def _require_reference():
    pytest.importorskip("torch")
    # qwen_tts imports sox / onnxruntime / torchaudio at package import (25 Hz tokenizer only); the stubs stand in
    # for them, so only a missing qwen_tts itself skips the test.
    spec = importlib.util.spec_from_file_location("_qwen3tts_reference_stubs", REFERENCE_DIR / "stubs.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    pytest.importorskip("qwen_tts")


@pytest.fixture(scope="module")
def make_fixtures():
    _require_reference()
    spec = importlib.util.spec_from_file_location("_qwen3tts_make_fixtures", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare(make_fixtures, tmp_path, perturb):
    """Problems make_fixtures.compare_oracle reports between the committed oracle and a copy changed by
    perturb(tensors) (a dict of torch tensors, changed in place)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ORACLE))
    perturb(tensors)
    copy = tmp_path / "oracle.safetensors"
    save_file(tensors, str(copy))
    problems, worst = [], [0.0, "-"]
    n = make_fixtures.compare_oracle(ORACLE, copy, "tiny-17/oracle.safetensors", problems, worst)
    assert n == len(tensors)
    return problems


def test_rounding_noise_of_another_cpu_passes(make_fixtures, tmp_path):
    import torch

    def cpu_noise(t):
        gen = torch.Generator().manual_seed(0)
        for k, v in t.items():
            if v.is_floating_point():  # every float moved by up to ~8 float32 ULPs, up or down
                t[k] = v * (1 + 1e-6 * (2 * torch.rand(v.shape, generator=gen, dtype=torch.float64) - 1)).float()
        mel = t["spk.mel"]
        i = int(mel.abs().argmax())  # the AMD EPYC regeneration: one mel element off by 1.43e-5
        mel.view(-1)[i] += 1.43e-5 if mel.view(-1)[i] > 0 else -1.43e-5

    assert _compare(make_fixtures, tmp_path, cpu_noise) == []


@pytest.mark.parametrize("change", ["float", "float_near_zero", "nan", "integer"])
def test_real_drift_fails(make_fixtures, tmp_path, change):
    def drift(t):
        if change == "float":  # a changed oracle moves values by 1e-3 and more
            t["spk.mel"].view(-1)[7] *= 1 + 1e-3
        elif change == "float_near_zero":
            v = t["custom_voice.talker_logits"].view(-1)
            i = int(v.abs().argmin())
            v[i] += 3e-5
        elif change == "nan":
            t["custom_voice.cp_logits"].view(-1)[0] = float("nan")
        else:
            codes = next(k for k, v in t.items() if not v.is_floating_point() and v.numel())
            t[codes].view(-1)[0] += 1

    problems = _compare(make_fixtures, tmp_path, drift)
    assert len(problems) == 1, problems


def test_fixtures_match_generator(reference_fixtures):
    _require_reference()
    # the session's regeneration on this machine (conftest.py), also what the parity tests compare with
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check", "--regenerated", str(reference_fixtures)],
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make_fixtures.py --check exited {proc.returncode}:\n{output}"
