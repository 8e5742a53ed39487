"""bench/bench.py --quick: the CI smoke run of the benchmark (tiny fixture, 10 frames, 1 run) prints its table;
with --reference, also the side-by-side table with the official qwen-tts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


def _table(lines: list[str], header: int) -> list[list[str]]:
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_bench_prints_one_row(tmp_path):
    # cwd outside the source tree: the benchmark and its children use the installed package
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | type |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    assert cols[:11] == ["model", "type", "load s", "prefill ms", "talker ms/frame", "code predictor ms/frame",
                         "codec ms/frame", "total s", "RTF", "first audio s", "peak RSS MB"]
    assert cols[11].startswith("logits cos") and cols[12].startswith("wave cos")
    rows = _table(lines, header)
    assert len(rows) == 1, rows
    (row,) = rows
    assert row[:2] == ["tiny-17", "q8_0"]
    values = [float(v) for v in row[2:]]
    assert all(v >= 0 for v in values[:-2])
    assert values[8] > 10  # peak RSS, MB
    assert 0.9 < values[9] <= 1.0 + 1e-9 and 0.9 < values[10] <= 1.0 + 1e-9  # q8_0 stays close to f32
    assert "| tiny-17 | q8_0 |" in r.stdout.split("Wyoming server", 1)[1]  # the server's time to first audio
    assert "tiny-17 (q8_0) 2 s reference encode time: speaker embedding " in r.stdout


# find_spec, not import: qwen_tts imports only behind the stubs that the benchmark's child installs first
@pytest.mark.skipif(importlib.util.find_spec("qwen_tts") is None, reason="the [reference] extra is not installed")
def test_quick_bench_reference_side_by_side(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--reference", "--no-server", "--cache-dir",
                        str(tmp_path / "cache")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stdout.splitlines()
    ours = _table(lines, next(i for i, line in enumerate(lines) if line.startswith("| model | type | load s |")))
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | type | qwen-tts "))
    assert "(PyTorch" in lines[header - 2] and "float32 weights" in lines[header - 2]
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    stages = ["talker", "code predictor", "codec", "total"]
    assert cols == ["model", "type"] + [c for s in stages for c in (f"qwen-tts {s} ms/frame", f"{s} ms/frame",
                                                                     f"{s} speed-up")] + ["qwen-tts peak RSS MB"]
    rows = _table(lines, header)
    assert len(rows) == 1, rows
    (row,) = rows
    assert row[:2] == ["tiny-17", "q8_0"]
    values = [float(v) for v in row[2:]]
    theirs, mine, ratios = values[0:12:3], values[1:12:3], values[2:12:3]
    assert all(v > 0 for v in theirs + ratios), row
    assert row[3:10:3] == ours[0][4:7], (row, ours)  # our figures are the first table's
    # total = the three stages (one run: no medians in between), up to the cells' rounding to 0.1
    assert abs(mine[3] - sum(mine[:3])) <= 0.25 and abs(theirs[3] - sum(theirs[:3])) <= 0.25, row
    assert values[12] > 100  # qwen-tts peak RSS, MB: torch and the model


def test_quick_bench_builds_side_by_side(tmp_path):
    """--builds: one row per source tree, each child importing its tree through PYTHONPATH. Two names for the
    installed package stand in for two trees (CI has no in-place build)."""
    import wyoming_qwen3tts
    site = Path(wyoming_qwen3tts.__file__).resolve().parent.parent
    for name in ("before", "after"):
        (tmp_path / name).symlink_to(site)
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--no-server", "--cache-dir", str(tmp_path / "cache"),
                        "--builds", f"{tmp_path / 'before'},{tmp_path / 'after'}"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | type |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    assert cols[:4] == ["model", "type", "build", "load s"]
    rows = _table(lines, header)
    assert [row[:3] for row in rows] == [["tiny-17", "q8_0", "before"], ["tiny-17", "q8_0", "after"]], rows
    assert all(float(row[cols.index("RTF")]) > 0 for row in rows)
    assert "[tiny-17 q8_0 before] timed run 1/1" in r.stderr and "[tiny-17 q8_0 after] timed run 1/1" in r.stderr
    for name in ("before", "after"):  # the cloning encoders too, in each tree's child
        assert f"tiny-17 (q8_0, {name}) 2 s reference encode time: speaker embedding " in r.stdout


def test_builds_and_isa_are_exclusive(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--isa", "generic", "--builds", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "--isa and --builds" in r.stderr
