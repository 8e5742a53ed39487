"""The engine's layout rule (native/check_layout.py, run by setup.py before every build): the tree follows it, and
each kind of violation is caught on a copy of the tree."""
import runpy
import shutil
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parent.parent / "native"
checker = runpy.run_path(str(NATIVE / "check_layout.py"))
violations = checker["violations"]


def test_tree_follows_the_layout_rule():
    assert violations(NATIVE) == []


@pytest.fixture
def native_copy(tmp_path):
    dst = tmp_path / "native"
    shutil.copytree(NATIVE, dst)
    return dst


def plant(native: Path, rel: str, include: str):
    path = native / rel
    path.write_text(f'#include "{include}"\n' + path.read_text(encoding="utf-8"), encoding="utf-8")


@pytest.mark.parametrize("rel, include, expected", [
    ("src/kernels/conv_avx2.cpp", "runtime/model.h", "kernels may not use runtime"),
    ("src/kernels/cpu_isa.cpp", "qwen3tts.h", "kernels may not use include"),
    ("src/codec/codec_decoder.cpp", "lm/transformer.h", "codec may not use lm"),
    ("src/lm/talker.cpp", "codec/codec_decoder.h", "lm may not use codec"),
    ("src/runtime/model.cpp", "api/api_internal.h", "runtime may not use api"),
    ("src/common.h", "kernels/cpu_isa.h", "common may not use kernels"),
    ("src/lm/talker.cpp", "transformer.h", "names no part"),
    ("src/lm/talker.cpp", "lm/no_such_file.h", "does not exist"),
    ("src/lm/talker.cpp", "tests/replay_io.h", "lm may not use tests"),
    ("tests/kernel_replay.cpp", "runtime/model.h", "tests may not use runtime"),
])
def test_violation_is_caught(native_copy, rel, include, expected):
    found = violations(native_copy)
    assert found == []
    plant(native_copy, rel, include)
    found = violations(native_copy)
    assert len(found) == 1 and expected in found[0] and rel.split("/", 1)[1] in found[0], found


def test_file_outside_the_parts_is_caught(native_copy):
    (native_copy / "src" / "misc").mkdir()
    (native_copy / "src" / "misc" / "x.cpp").write_text("int x;\n")
    assert any("misc/x.cpp" in v and "not in any part" in v for v in violations(native_copy))


def test_ggml_headers_are_allowed_everywhere(native_copy):
    plant(native_copy, "src/kernels/conv_avx2.cpp", "ggml-cpu.h")
    plant(native_copy, "src/common.h", "ggml.h")
    assert violations(native_copy) == []
