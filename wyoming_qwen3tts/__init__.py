"""Wyoming protocol server for Qwen3-TTS, backed by a ggml C++ engine."""

from .engine import Qwen3TTS

__version__ = "0.1.0"
__all__ = ["Qwen3TTS", "__version__"]
