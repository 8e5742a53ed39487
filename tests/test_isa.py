"""The ISA switch: QWEN3TTS_ISA picks the instruction-set level of the engine's own kernels once per process, can
only lower it, and Qwen3TTS.isa_level() / system_info() report the level in use.

The kernel and parity test modules in KERNEL_SUITES run in-process at the CPU's best level with the rest of the
suite; test_kernel_suites_at_level runs them again, in a child pytest, at every lower level this CPU executes, so
every kernel variant the CI machine can run is checked against the same references and tolerances. Levels above
the CPU's best (AMX on AMD, ARM's NEON on x86) cannot run here and are skipped with that reason."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_qwen3tts import Qwen3TTS
from helpers import REFERENCE_FIXTURES_ENV, cpu_flags

TESTS = Path(__file__).resolve().parent
X86_LEVELS = ["generic", "avx2", "avx512", "amx"]
KERNEL_SUITES = ["test_parity_engine.py", "test_fused_decoder.py", "test_vnni_matmul.py", "test_parity_codec.py",
                 "test_conv_packed.py"]


def child_isa(level: str) -> tuple[str, str, str]:
    code = ("from wyoming_qwen3tts import Qwen3TTS as T; print(T.isa_level()); print(T.isa_level(True)); "
            "print(T.system_info())")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "QWEN3TTS_ISA": level}, cwd=TESTS.parent.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    level_used, best, info = r.stdout.splitlines()[:3]
    return level_used, best, info


def test_default_is_the_best_level():
    if os.environ.get("QWEN3TTS_ISA"):
        pytest.skip("QWEN3TTS_ISA is set for this run")
    assert Qwen3TTS.isa_level() == Qwen3TTS.isa_level(best=True)
    assert f"engine ISA {Qwen3TTS.isa_level()} " in Qwen3TTS.system_info()


def test_generic_runs_everywhere():
    level, best, info = child_isa("generic")
    assert (level, best) == ("generic", Qwen3TTS.isa_level(best=True))
    assert f"engine ISA generic (CPU best {best})" in info


def test_unknown_or_foreign_level_is_ignored_and_said():
    best = Qwen3TTS.isa_level(best=True)
    level, _, info = child_isa("avx1024")
    assert level == best and "QWEN3TTS_ISA=avx1024 is not a level" in info
    foreign = "neon" if best in X86_LEVELS else "avx2"
    level, _, info = child_isa(foreign)
    assert level == best and "for another architecture" in info


# What ggml's CPU variant may and must be compiled with at each level (the names of ggml's feature list).
ABOVE_LEVEL = {"generic": {"AVX2", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"},
               "avx2": {"AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"},
               "avx512": {"AMX_INT8"}, "amx": set()}
AT_LEVEL = {"generic": set(), "avx2": {"AVX2", "FMA", "F16C"}, "avx512": {"AVX2", "AVX512"},
            "amx": {"AVX512", "AMX_INT8"}}
# CPU flags (/proc/cpuinfo) whose ggml feature the best variant at a level has when the CPU has them.
CPU_FLAG_FEATURES = {"avx2": {"avx_vnni": "AVX_VNNI"},
                     "avx512": {"avx512_vnni": "AVX512_VNNI", "avx512_bf16": "AVX512_BF16"}}


def ggml_cpu_backend(info: str) -> tuple[str, set[str]]:
    """The ggml CPU variant and its compiled features, from system_info()."""
    m = re.search(r"backend CPU \(([^)]*)\); features: ([^;]*);", info)
    assert m, info
    return m.group(1), set(m.group(2).split())


@pytest.mark.parametrize("level", X86_LEVELS)
def test_ggml_cpu_variant_follows_the_level(level):
    """ggml is built with a CPU module per instruction set (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, as
    scripts/run-tests builds it), and the engine loads the best one that needs nothing above its level: at
    QWEN3TTS_ISA=avx2 on an AVX-512 machine ggml's kernels are AVX2 ones too, as on an AVX2 CPU."""
    best = Qwen3TTS.isa_level(best=True)
    if best not in X86_LEVELS:
        pytest.skip(f"x86 level on a {best} CPU")
    if X86_LEVELS.index(level) > X86_LEVELS.index(best):
        pytest.skip(f"{level} is above this CPU's best level ({best}): it cannot run here")
    _, _, info = child_isa(level)
    variant, features = ggml_cpu_backend(info)
    assert variant != "built-in", f"ggml was built with its CPU backend inside libggml, not as variants: {info}"
    assert not features & ABOVE_LEVEL[level], f"QWEN3TTS_ISA={level} loaded ggml's {variant}: {info}"
    assert AT_LEVEL[level] <= features, f"QWEN3TTS_ISA={level} loaded ggml's {variant}: {info}"
    flags = cpu_flags()
    for lvl in X86_LEVELS[1:X86_LEVELS.index(level) + 1]:
        for flag, feature in CPU_FLAG_FEATURES.get(lvl, {}).items():
            if flag in flags:
                assert feature in features, f"the CPU has {flag}, ggml's {variant} does not use it: {info}"


def test_a_level_above_the_cpu_is_clamped():
    best = Qwen3TTS.isa_level(best=True)
    if best == "amx" or best not in X86_LEVELS:
        pytest.skip(f"no x86 level above this CPU's best ({best})")
    level, _, info = child_isa("amx")
    assert level == best and f"clamped to {best}" in info


@pytest.mark.parametrize("level", X86_LEVELS[:-1])
def test_kernel_suites_at_level(level, reference_fixtures):
    best = Qwen3TTS.isa_level(best=True)
    if best not in X86_LEVELS:
        pytest.skip(f"x86 level on a {best} CPU")
    if X86_LEVELS.index(level) >= X86_LEVELS.index(best):
        pytest.skip(f"{level} is not below this CPU's best level ({best}): the main run covers it or it cannot run")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_SUITES],
                       cwd=TESTS, env={**os.environ, "QWEN3TTS_ISA": level,
                                       REFERENCE_FIXTURES_ENV: str(reference_fixtures)},
                       capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"kernel suites at QWEN3TTS_ISA={level}:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
