"""One metadata string of a GGUF file, read from its header without loading the model.

The header is a list of typed key/value pairs before the tensors; a value is skipped by its type (arrays of
strings walked length by length). `gguf.GGUFReader` parses every tensor and token into objects (12 s for the
embedded Gemma's 262k-token vocabulary); this reads only up to the key asked for.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian; v2 and v3 use 64-bit counts).
"""

from __future__ import annotations

import mmap
import struct
from functools import lru_cache
from pathlib import Path

# value type id → size in bytes of one scalar (8: string, 9: array are handled apart)
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def chat_template(path: Path) -> str | None:
    """The chat template a GGUF carries (`tokenizer.chat_template`), or None (a base model has none)."""
    stat = path.stat()
    return _metadata_string(str(path), stat.st_size, stat.st_mtime_ns, "tokenizer.chat_template")


@lru_cache(maxsize=16)
def _metadata_string(path: str, _size: int, _mtime: int, wanted: str) -> str | None:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            return None
        (version,) = struct.unpack_from("<I", data, 4)
        if version < 2:
            return None  # v1 used 32-bit counts; no current model is written that way
        (kv_count,) = struct.unpack_from("<Q", data, 16)
        at = 24
        for _ in range(kv_count):
            key, at = _string(data, at)
            (kind,) = struct.unpack_from("<I", data, at)
            at += 4
            if key == wanted and kind == _STRING:
                return _string(data, at)[0]
            at = _skip(data, at, kind)
    return None


def _string(data: mmap.mmap, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, at)
    return data[at + 8: at + 8 + length].decode("utf-8", errors="replace"), at + 8 + length


def _skip(data: mmap.mmap, at: int, kind: int) -> int:
    if kind == _STRING:
        (length,) = struct.unpack_from("<Q", data, at)
        return at + 8 + length
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item_kind in _SCALAR_SIZES:
            return at + count * _SCALAR_SIZES[item_kind]
        for _ in range(count):
            at = _skip(data, at, item_kind)
        return at
    return at + _SCALAR_SIZES[kind]
