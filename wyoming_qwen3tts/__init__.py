"""Wyoming protocol server for Qwen3-TTS, backed by a ggml C++ engine.

`Qwen3TTS` is imported on first use, not here: the pure-Python parts (the converter, the text side) then work
from a source checkout too, where the compiled engine does not exist (`python -m wyoming_qwen3tts.convert` run
from the repository root imports this directory, not the installed package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Qwen3TTS", "__version__"]

if TYPE_CHECKING:
    from .engine import Qwen3TTS


def __getattr__(name: str):
    if name == "Qwen3TTS":
        from .engine import Qwen3TTS

        return Qwen3TTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
