"""Builds the one compiled extension, `wyoming_qwen3tts._engine`: the C++17 engine in native/src/ plus its
Cython wrapper in _ext/, linked against the ggml shared libraries of the `libggml-python` package.

The ggml libraries are found at run time without LD_LIBRARY_PATH: the extension carries an rpath to the
libggml package beside it in site-packages (lib/ or lib64/, whichever the wheel used), and
wyoming_qwen3tts/_native.py preloads them by absolute path as a fallback (editable installs, odd layouts).
"""
import glob
import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def ggml_dirs():
    import libggml

    root = Path(libggml.__file__).parent
    libdirs = [str(root / d) for d in ("lib64", "lib") if (root / d).is_dir() and glob.glob(str(root / d / "libggml*.so*"))]
    if not libdirs or not (root / "include" / "ggml.h").is_file():
        raise RuntimeError(f"libggml-python at {root} has no ggml headers or libraries")
    return str(root / "include"), libdirs


def check_layout():
    """The engine's layout rule (native/check_layout.py): a part that includes one it may not use fails the build."""
    import runpy

    checker = runpy.run_path(str(Path(__file__).parent / "native" / "check_layout.py"))
    found = checker["violations"](Path(__file__).parent / "native")
    if found:
        raise SystemExit("native/ layout rule broken:\n  " + "\n  ".join(found))


check_layout()
include_dir, lib_dirs = ggml_dirs()
sources = ["_ext/engine.pyx"] + sorted(glob.glob("native/src/**/*.cpp", recursive=True))
extra_compile = ["-std=c++17", "-O2", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
if os.environ.get("QWEN3TTS_DEBUG_BUILD"):
    extra_compile = ["-std=c++17", "-O0", "-g", "-Wall"]

ext = Extension(
    "wyoming_qwen3tts._engine",
    sources=sources,
    depends=sorted(glob.glob("_ext/*.pxi") + glob.glob("native/include/*.h") + glob.glob("native/src/**/*.h", recursive=True)),
    language="c++",
    include_dirs=[include_dir, "native/include", "native/src", numpy.get_include()],
    library_dirs=lib_dirs,
    libraries=["ggml", "ggml-base"],
    extra_compile_args=extra_compile,
    extra_link_args=["-Wl,-rpath,$ORIGIN/../libggml/lib64", "-Wl,-rpath,$ORIGIN/../libggml/lib"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([ext], language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}))
