"""bench/bench.py --quick: the CI smoke run of the benchmark (tiny fixture, 10 frames, 1 run) prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


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
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert len(rows) == 1, rows
    (row,) = rows
    assert row[:2] == ["tiny-17", "q8_0"]
    values = [float(v) for v in row[2:]]
    assert all(v >= 0 for v in values[:-2])
    assert values[8] > 10  # peak RSS, MB
    assert 0.9 < values[9] <= 1.0 + 1e-9 and 0.9 < values[10] <= 1.0 + 1e-9  # q8_0 stays close to f32
    assert "| tiny-17 | q8_0 |" in r.stdout.split("Wyoming server", 1)[1]  # the server's time to first audio
