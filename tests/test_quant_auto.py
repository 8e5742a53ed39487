"""--quant auto: the first start converts the candidates in order of quality, times each and keeps the first one with
real-time margin (else the fastest), caches the decision per model and machine, and later starts reuse it without
measuring. The decision logic runs with given timings; the timing itself and the server's start-up run for real
on the tiny checkpoint."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time


from wyoming_qwen3tts import quant_auto


def timings(values: dict[str, float], calls: list[str]):
    def measure(path, threads):
        quant = path.stem.rsplit("-", 1)[1]
        calls.append(quant)
        return values[quant]

    return measure


def never_measure(path, threads):
    raise AssertionError("a cached decision must not be measured again")


def test_first_type_with_margin_is_kept_and_cached(tiny_checkpoint, tmp_path, caplog):
    model = str(tiny_checkpoint("tiny-17"))
    calls: list[str] = []
    with caplog.at_level(logging.INFO, logger="wyoming_qwen3tts"):
        path, choice = quant_auto.choose(model, tmp_path, threads=1, measure=timings({"q8_0": 0.5}, calls),
                                         progress=False)
    assert choice == "q8_0" and path.name.endswith("-q8_0.gguf") and path.is_file()
    assert calls == ["q8_0"]  # q4_k is neither converted nor timed
    assert not list((tmp_path / "models").glob("*-q4_k.gguf"))
    assert "quantization auto: q8_0 (real-time factor 0.50 <= 0.8" in caplog.text
    again, choice = quant_auto.choose(model, tmp_path, threads=1, measure=never_measure, progress=False)
    assert (again, choice) == (path, "q8_0")


def test_a_slow_machine_gets_q4_k(tiny_checkpoint, tmp_path, caplog):
    model = str(tiny_checkpoint("tiny-17"))
    calls: list[str] = []
    with caplog.at_level(logging.INFO, logger="wyoming_qwen3tts"):
        path, choice = quant_auto.choose(model, tmp_path, threads=2, measure=timings({"q8_0": 1.18, "q4_k": 0.78},
                                                                                        calls), progress=False)
    assert (choice, calls) == ("q4_k", ["q8_0", "q4_k"]) and path.name.endswith("-q4_k.gguf")
    assert "q8_0 real-time factor 1.18, q4_k real-time factor 0.78" in caplog.text
    # another thread count is another machine as far as the decision goes
    calls.clear()
    _, choice = quant_auto.choose(model, tmp_path, threads=1, measure=timings({"q8_0": 0.6}, calls), progress=False)
    assert (choice, calls) == ("q8_0", ["q8_0"])
    # the 2-thread decision is still cached beside it
    assert quant_auto.choose(model, tmp_path, threads=2, measure=never_measure, progress=False)[1] == "q4_k"


def test_no_type_fast_enough_takes_the_fastest_and_warns(tiny_checkpoint, tmp_path, caplog):
    model = str(tiny_checkpoint("tiny-17"))
    with caplog.at_level(logging.WARNING, logger="wyoming_qwen3tts"):
        _, choice = quant_auto.choose(model, tmp_path, measure=timings({"q8_0": 1.9, "q4_k": 1.5}, []),
                                      progress=False)
    assert choice == "q4_k"
    assert "no type keeps a real-time factor of 0.8 or less" in caplog.text


def test_a_damaged_or_foreign_cache_is_measured_again(tiny_checkpoint, tmp_path):
    model = str(tiny_checkpoint("tiny-17"))
    quant_auto.choose(model, tmp_path, measure=timings({"q8_0": 0.5}, []), progress=False)
    (cache,) = (tmp_path / "models").glob("quant-auto-*.json")
    record = json.loads(cache.read_text())
    record["decisions"][0]["machine"]["cpu"] = "another CPU"
    cache.write_text(json.dumps(record))
    calls: list[str] = []
    assert quant_auto.choose(model, tmp_path, measure=timings({"q8_0": 0.5}, calls), progress=False)[1] == "q8_0"
    assert calls == ["q8_0"]
    cache.write_text("{not json")
    calls.clear()
    quant_auto.choose(model, tmp_path, measure=timings({"q8_0": 0.5}, calls), progress=False)
    assert calls == ["q8_0"]


def test_measure_rtf_times_real_frames(tiny_gguf):
    t0 = time.perf_counter()
    rtf = quant_auto.measure_rtf(tiny_gguf("tiny-17", "q8_0"), threads=1, frames=12)
    wall = time.perf_counter() - t0
    assert 0 < rtf < wall / (12 / 12.5)  # the timed part is less than the whole call (load and warm-up excluded)


def test_the_server_defaults_to_auto_and_says_what_it_chose(tiny_checkpoint, tmp_path):
    sock = tmp_path / "tts.sock"
    args = [sys.executable, "-m", "wyoming_qwen3tts", "--model", str(tiny_checkpoint("tiny-17")), "--data-dir",
            str(tmp_path / "data"), "--uri", f"unix://{sock}", "--threads", "1"]

    def start_and_stop() -> str:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        assert sock.exists() or "ready" in out, out
        return out

    first = start_and_stop()
    assert "quantization auto: timing q8_0 on this machine" in first
    assert "quantization auto: q8_0 (real-time factor" in first, first
    assert list((tmp_path / "data" / "models").glob("*-q8_0.gguf"))
    sock.unlink(missing_ok=True)
    second = start_and_stop()
    assert "timing" not in second and "quantization auto: q8_0 (measured on this machine earlier" in second, second
