"""Read string metadata (e.g. the chat template) from a GGUF file header, without extra packages."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# Fixed sizes of the scalar value types of the GGUF spec (v2/v3).
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


def _u32(f: BinaryIO) -> int:
    return int(struct.unpack("<I", _read(f, 4))[0])


def _u64(f: BinaryIO) -> int:
    return int(struct.unpack("<Q", _read(f, 8))[0])


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("truncated GGUF header")
    return data


def _string(f: BinaryIO) -> str:
    return _read(f, _u64(f)).decode("utf-8", errors="replace")


def _skip(f: BinaryIO, vtype: int) -> None:
    if vtype in _SCALAR_SIZE:
        f.seek(_SCALAR_SIZE[vtype], 1)
    elif vtype == _STRING:
        f.seek(_u64(f), 1)
    elif vtype == _ARRAY:
        etype, count = _u32(f), _u64(f)
        if etype in _SCALAR_SIZE:
            f.seek(_SCALAR_SIZE[etype] * count, 1)
        else:
            for _ in range(count):
                _skip(f, etype)
    else:
        raise GGUFError(f"unknown GGUF value type {vtype}")


def read_string_metadata(path: str | Path, keys: set[str]) -> dict[str, str]:
    """Return the string values of `keys` found in the GGUF header (missing keys are left out)."""
    found: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version = _u32(f)
        if version < 2:
            raise GGUFError(f"GGUF version {version} is not supported")
        _u64(f)  # tensor count
        for _ in range(_u64(f)):
            key, vtype = _string(f), _u32(f)
            if key in keys and vtype == _STRING:
                found[key] = _string(f)
                if len(found) == len(keys):
                    break
            else:
                _skip(f, vtype)
    return found


def chat_template(path: str | Path) -> str | None:
    """The model's own Jinja chat template, if the GGUF file carries one."""
    return read_string_metadata(path, {"tokenizer.chat_template"}).get("tokenizer.chat_template")
