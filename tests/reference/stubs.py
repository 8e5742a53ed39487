"""Import stubs for the qwen-tts reference package.

``import qwen_tts`` imports the 25 Hz tokenizer, which imports ``sox``, ``onnxruntime`` and
``torchaudio.compliance.kaldi`` at module level. The 12 Hz models (the only ones this project ports) use none
of them, so empty placeholder modules are registered instead of installing them (PyPI's torchaudio pins a
different torch). Each placeholder needs a ``__spec__`` because transformers probes packages with
``importlib.util.find_spec``. Real modules, when installed and already imported, are left alone.

Import this module before anything from ``qwen_tts``.
"""
import importlib.machinery
import sys
import types

_NAMES = ("sox", "onnxruntime", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi")


def install():
    for name in _NAMES:
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = mod
    # attribute access (torchaudio.compliance.kaldi) must work as for real sub-packages
    for parent, child in (("torchaudio", "compliance"), ("torchaudio.compliance", "kaldi")):
        if not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])


install()
