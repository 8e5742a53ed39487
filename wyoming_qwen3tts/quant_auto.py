"""``--quant auto``: the weight type that keeps this machine faster than real time.

Q8_0 sounds closest to the released BF16 weights; Q4_K reads half the bytes per frame and is the faster type on
every CPU the engine runs on (the talker and code predictor are bound by memory bandwidth). On a fast machine
Q8_0 has real-time margin, on a small one only Q4_K does. At the first start the server converts the candidates
in order of quality, times a few frames of each as the server streams them, and keeps the first one whose
real-time factor is at most ``max_rtf`` (the margin covers the text side, other clients and a busy host), else
the fastest one measured. The decision is cached in the data directory per model and machine (CPU, the engine's
ISA level, threads, version), so later starts cost nothing; a new machine, thread count or version measures again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

from . import __version__
from .download import resolve_model

_LOGGER = logging.getLogger(__name__)

CANDIDATES = ("q8_0", "q4_k")  # best quality first
DEFAULT_MAX_RTF = 0.8
MEASURE_FRAMES = 24  # about 2 s of audio: long enough for the codec's chunking to settle, a few seconds to time
MAX_CACHED = 8  # decisions kept per model (machines, thread counts, margins)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(threads: int | None) -> dict:
    from .engine import Qwen3TTS

    return {"cpu": cpu_name(), "isa": Qwen3TTS.isa_level(), "threads": threads or os.cpu_count(),
            "version": __version__}


def measure_rtf(gguf: Path, threads: int | None, frames: int = MEASURE_FRAMES) -> float:
    """Seconds of compute per second of audio for `frames` frames, streamed as the server streams them (after a
    warm-up that builds the graphs)."""
    from .engine import FRAME_RATE, Qwen3TTS
    from .request import SynthesisRequest

    tts = Qwen3TTS(gguf, threads=threads)
    request = SynthesisRequest(text="Good morning, the kitchen lights are on and the door is locked.", greedy=True,
                               **tts.any_voice())
    for _ in tts.stream(request, frames_per_chunk="auto", max_frames=2):
        pass
    t0 = time.perf_counter()
    for _ in tts.stream(request, frames_per_chunk="auto", min_frames=frames, max_frames=frames):
        pass
    return (time.perf_counter() - t0) / (frames / FRAME_RATE)


def _cache_path(data_dir: Path, model: str) -> Path:
    digest = hashlib.sha256(model.encode()).hexdigest()[:16]
    return data_dir / "models" / f"quant-auto-{digest}.json"


def _read_cache(path: Path, model: str) -> list[dict]:
    """The decisions cached for MODEL, one per machine key and margin (a damaged file holds none)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(cached, dict) or cached.get("model") != model or not isinstance(cached.get("decisions"), list):
        return []
    return [d for d in cached["decisions"] if isinstance(d, dict) and d.get("choice") in CANDIDATES]


def _find(decisions: list[dict], machine: dict, max_rtf: float) -> dict | None:
    return next((d for d in decisions if d.get("machine") == machine and d.get("max_rtf") == max_rtf), None)


def _write_cache(path: Path, model: str, decisions: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"model": model, "decisions": decisions[-MAX_CACHED:]}, indent=1))
    os.replace(tmp, path)


def choose(model: str, data_dir: Path, threads: int | None = None, local_files_only: bool = False,
           max_rtf: float = DEFAULT_MAX_RTF, measure: Callable[[Path, int | None], float] = measure_rtf,
           progress: bool = True) -> tuple[Path, str]:
    """(GGUF path, weight type) for MODEL (a checkpoint directory or repo id; see download.resolve_model).
    Raises download.ModelError."""
    data_dir = Path(data_dir).expanduser().absolute()
    machine = machine_key(threads)
    cache = _cache_path(data_dir, model)
    decisions = _read_cache(cache, model)
    cached = _find(decisions, machine, max_rtf)
    if cached is not None:
        choice = cached["choice"]
        _LOGGER.info("quantization auto: %s (measured on this machine earlier: %s)", choice, _rtfs(cached["rtf"]))
        return resolve_model(model, data_dir, choice, local_files_only=local_files_only, progress=progress), choice

    rtf: dict[str, float] = {}
    paths: dict[str, Path] = {}
    choice = None
    for quant in CANDIDATES:
        paths[quant] = resolve_model(model, data_dir, quant, local_files_only=local_files_only, progress=progress)
        _LOGGER.info("quantization auto: timing %s on this machine (%d frames)", quant, MEASURE_FRAMES)
        rtf[quant] = measure(paths[quant], threads)
        if rtf[quant] <= max_rtf:
            choice = quant
            break
    if choice is None:
        choice = min(rtf, key=rtf.get)
        _LOGGER.warning("quantization auto: %s, the fastest type here, but no type keeps a real-time factor of %g or "
                        "less on this machine (%s): speech may stutter; fewer other loads, more --threads or a "
                        "smaller model help", choice, max_rtf, _rtfs(rtf))
    else:
        _LOGGER.info("quantization auto: %s (real-time factor %.2f <= %g%s)", choice, rtf[choice], max_rtf,
                     "" if choice == CANDIDATES[0] else f"; {_rtfs(rtf)}")
    others = [d for d in decisions if d.get("machine") != machine or d.get("max_rtf") != max_rtf]
    _write_cache(cache, model, [*others, {"machine": machine, "max_rtf": max_rtf, "choice": choice, "rtf": rtf}])
    return paths[choice], choice


def _rtfs(rtf: dict) -> str:
    return ", ".join(f"{q} real-time factor {v:.2f}" for q, v in rtf.items())
