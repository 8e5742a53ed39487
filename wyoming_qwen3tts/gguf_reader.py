"""Reading GGUF files from Python without gguf.GGUFReader.

``gguf.GGUFReader`` is not used on purpose: its constructor turns every element of every array into numpy views
(several per string) and reads all tensor infos, which takes ~10 s for the ~450k strings of the tokenizer. These
readers walk the header once with ``struct`` (little-endian GGUF v2/v3, as ``gguf.GGUFWriter`` writes).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable

import gguf


_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "B", gguf.GGUFValueType.INT8: "b",
    gguf.GGUFValueType.UINT16: "H", gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I", gguf.GGUFValueType.INT32: "i",
    gguf.GGUFValueType.UINT64: "Q", gguf.GGUFValueType.INT64: "q",
    gguf.GGUFValueType.FLOAT32: "f", gguf.GGUFValueType.FLOAT64: "d",
    gguf.GGUFValueType.BOOL: "?",
}


def read_gguf_metadata(path: str | os.PathLike[str], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Read key/value metadata of a GGUF file (all of it, or only ``keys``) without touching the tensors.

    ``gguf.GGUFReader`` is not used here on purpose: its constructor turns every element of every array into
    numpy views (several per string) and reads all tensor infos, which takes ~10 s for the ~450k strings of the
    tokenizer. This reader walks the header once with ``struct`` (little-endian GGUF v2/v3, as
    ``gguf.GGUFWriter`` writes) and decodes only the requested keys; the result is the same as
    ``GGUFReader(path).fields[key].contents()``.
    """
    wanted = None if keys is None else set(keys)
    out: dict[str, Any] = {}
    if os.path.getsize(path) < 24:  # also keeps mmap from failing on an empty file
        raise ValueError(f"{path}: not a GGUF file (too short)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if struct.unpack_from("<I", mm, 0)[0] != gguf.GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        offs = 24
        try:
            for _ in range(n_kv):
                key, offs = _read_str(mm, offs)
                (vtype,) = struct.unpack_from("<I", mm, offs)
                offs += 4
                want = wanted is None or key in wanted
                value, offs = _read_value(mm, offs, vtype, decode=want)
                if want:
                    out[key] = value
                    if wanted is not None and len(out) == len(wanted):
                        break  # the KV section is walked sequentially: stop once we have what we need
        except (struct.error, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: corrupt GGUF metadata: {e}") from e
    return out


def _read_str(mm: mmap.mmap, offs: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", mm, offs)
    offs += 8
    if offs + n > len(mm):
        raise ValueError("string runs past the end of the file")
    return mm[offs:offs + n].decode("utf-8"), offs + n


def _read_value(mm: mmap.mmap, offs: int, vtype: int, decode: bool) -> tuple[Any, int]:
    if vtype == gguf.GGUFValueType.STRING:
        if not decode:
            (n,) = struct.unpack_from("<Q", mm, offs)
            return None, offs + 8 + n
        return _read_str(mm, offs)
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is not None:
        return struct.unpack_from("<" + fmt, mm, offs)[0], offs + struct.calcsize(fmt)
    if vtype != gguf.GGUFValueType.ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype}")

    itype, count = struct.unpack_from("<IQ", mm, offs)
    offs += 12
    fmt = _SCALAR_FORMATS.get(itype)
    if fmt is not None:
        size = struct.calcsize(fmt) * count
        if offs + size > len(mm):
            raise ValueError("array runs past the end of the file")
        values = list(struct.unpack_from(f"<{count}{fmt}", mm, offs)) if decode else None
        return values, offs + size
    if itype == gguf.GGUFValueType.STRING:
        # The hot path (151k tokens, ~300k merges): a tight loop of unpack + slice + decode per string.
        unpack_len = struct.Struct("<Q").unpack_from
        strings = []
        append = strings.append
        for _ in range(count):
            (n,) = unpack_len(mm, offs)
            offs += 8
            if decode:
                append(mm[offs:offs + n].decode("utf-8"))
            offs += n
        if offs > len(mm):
            raise ValueError("string array runs past the end of the file")
        return (strings if decode else None), offs
    # Nested arrays: not used by our files, but walk them so that other keys can still be found.
    values = []
    for _ in range(count):
        value, offs = _read_value(mm, offs, itype, decode)
        values.append(value)
    return (values if decode else None), offs




@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml order (ne0 first)
    ggml_type: int
    offset: int              # absolute byte offset of the data in the file
    nbytes: int


def read_gguf_tensors(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """The tensor table of a GGUF file: name -> shape, type and where its bytes are."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            if struct.unpack_from("<I", mm, 0)[0] != gguf.GGUF_MAGIC:
                raise ValueError("not a GGUF file")
            _version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
            offs = 24
            alignment = gguf.GGUF_DEFAULT_ALIGNMENT
            for _ in range(n_kv):
                key, offs = _read_str(mm, offs)
                (vtype,) = struct.unpack_from("<I", mm, offs)
                value, offs = _read_value(mm, offs + 4, vtype, decode=key == "general.alignment")
                if key == "general.alignment":
                    alignment = int(value)
            infos = []
            for _ in range(n_tensors):
                name, offs = _read_str(mm, offs)
                (n_dims,) = struct.unpack_from("<I", mm, offs)
                shape = struct.unpack_from(f"<{n_dims}Q", mm, offs + 4)
                offs += 4 + 8 * n_dims
                ggml_type, rel = struct.unpack_from("<IQ", mm, offs)
                offs += 12
                infos.append((name, tuple(int(x) for x in shape), int(ggml_type), int(rel)))
        except (struct.error, UnicodeDecodeError, KeyError) as e:
            raise ValueError(f"{path}: corrupt GGUF header: {e}") from e
        data_start = (offs + alignment - 1) // alignment * alignment
    out = {}
    for name, shape, ggml_type, rel in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        n = 1
        for d in shape:
            n *= d
        out[name] = TensorInfo(name, shape, ggml_type, data_start + rel, n // block * type_size)
    return out
