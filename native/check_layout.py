#!/usr/bin/env python3
"""The engine's layout rule: which part of native/ may include which. setup.py runs it before every build (a
violation fails the build), tests/test_layout.py runs it on the tree and on planted violations.

    include/      the C API (qwen3tts.h: the product; qwen3tts_debug.h: parity and kernel-test hooks)
    src/common.h  errors, the per-thread work split, huge pages, BF16 rounding
    src/kernels/  compute kernels per ISA behind one dispatch point each; the CPU level (cpu_isa.h)
    src/runtime/  the model file (GGUF, mmap, tensors), graphs, thread pools
    src/lm/       the talker, the code predictor, the sampler, the prompt, the session
    src/codec/    the codec decoder and encoder, the speaker encoder
    src/api/      the C API's implementation

A part may include the parts listed for it below (and the C/C++ library and ggml). Kernels therefore build and
test alone; the language model and the codec do not know each other; only the API (and the session, which
implements the API's request and record types) sees include/. native/tests/ (programs that drive the C API on
machines without Python) includes include/ and its own "tests/..." headers.
"""
import re
import sys
from pathlib import Path

ALLOWED = {
    "common": {"common"},
    "kernels": {"common", "kernels"},
    "runtime": {"common", "kernels", "runtime"},
    "lm": {"common", "kernels", "runtime", "lm", "include"},
    "codec": {"common", "kernels", "runtime", "codec"},
    "api": {"common", "kernels", "runtime", "lm", "codec", "api", "include"},
    "include": {"include"},
    "tests": {"include", "tests"},
}
PUBLIC_HEADERS = {"qwen3tts.h", "qwen3tts_debug.h"}
PART_ROOTS = {"include": "include", "tests": "."}  # where an include of the part is found (the rest: src/)
SYSTEM_HEADERS = re.compile(r"^(ggml|gguf)[\w-]*\.h$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def part_of_file(native: Path, path: Path) -> str:
    rel = path.relative_to(native).parts
    if rel[0] == "src":
        return "common" if len(rel) == 2 else rel[1]
    return rel[0]


def part_of_include(name: str):
    """The part an include names, or None for a header outside the engine (ggml's)."""
    if name in PUBLIC_HEADERS:
        return "include"
    if name in ("common.h",):
        return "common"
    if "/" in name:
        return name.split("/", 1)[0]  # "part/file.h"
    if SYSTEM_HEADERS.match(name):
        return None
    return "unknown"


def violations(native: Path):
    """Every include that breaks the rule, as 'file: includes "x" (part a may not use part b)'."""
    found = []
    files = sorted(p for p in native.rglob("*") if p.suffix in (".h", ".cpp") and p.is_file())
    for path in files:
        part = part_of_file(native, path)
        allowed = ALLOWED.get(part)
        if allowed is None:
            found.append(f"{path.relative_to(native)}: not in any part of the layout")
            continue
        for name in INCLUDE.findall(path.read_text(encoding="utf-8")):
            target = part_of_include(name)
            if target is None:
                continue
            if target == "unknown" or target not in ALLOWED:
                found.append(f'{path.relative_to(native)}: includes "{name}", which names no part (use "part/file.h")')
            elif not (native / PART_ROOTS.get(target, "src") / name).is_file():
                found.append(f'{path.relative_to(native)}: includes "{name}", which does not exist')
            elif target not in allowed:
                found.append(f'{path.relative_to(native)}: includes "{name}" ({part} may not use {target})')
    return found


def main(argv):
    native = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    found = violations(native)
    for line in found:
        print(f"layout: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
