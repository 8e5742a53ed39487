"""Loads the compiled engine. The ggml shared libraries of `libggml-python` are preloaded by absolute path
(RTLD_GLOBAL) before the extension is imported, so the extension resolves them by soname even where its
rpath does not reach them (editable installs, relocated environments), and no LD_LIBRARY_PATH is needed."""

from __future__ import annotations

import ctypes
from pathlib import Path


def _preload_ggml() -> None:
    import libggml

    root = Path(libggml.__file__).parent
    for sub in ("lib64", "lib"):
        d = root / sub
        # dependency order: base, then the CPU backend, then the registry library
        for name in ("libggml-base.so", "libggml-cpu.so", "libggml.so"):
            if (d / name).exists():
                ctypes.CDLL(str(d / name), mode=ctypes.RTLD_GLOBAL)


_preload_ggml()

try:
    from . import _engine  # noqa: E402
except ImportError as e:
    if not list(Path(__file__).parent.glob("_engine*.so")):
        # The usual cause: `python -m wyoming_qwen3tts` run from the repository root imports the source tree,
        # where the extension is not built, instead of the installed package.
        raise ImportError(
            f"the compiled engine (wyoming_qwen3tts._engine) is not in {Path(__file__).parent}: this is a source "
            "tree, not the installed package. Use the installed commands (wyoming-qwen3tts, wyoming-qwen3tts-synth, "
            "wyoming-qwen3tts-convert) or run `python -m` from another directory.") from e
    raise

__all__ = ["_engine"]
