"""The safetensors header, validated before a single tensor is built.

Layout: 8 bytes little-endian ``N``, then ``N`` bytes of UTF-8 JSON (``{name: {dtype,
shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, possibly padded with
spaces), then the data area. Offsets are relative to the data area. The format requires
the tensors to tile the data area exactly: no overlaps and no holes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeaderError",
    "TensorSpec",
    "parse_header",
    "read_header",
]

# The safetensors library's own bound; a header larger than this is hostile.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class SafetensorsHeaderError(ValueError):
    """The file is not a well-formed safetensors file; the message says why and where."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: invalid safetensors header: {message}")
        self.path = path


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its dtype, shape and byte span (absolute file offsets)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int  # exclusive

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(
    prefix: bytes, file_size: int, *, path: str = "<buffer>"
) -> tuple[list[TensorSpec], dict[str, str]]:
    """Validate the header at the start of a file of ``file_size`` bytes.

    ``prefix`` must hold at least the first ``8 + N`` bytes. Returns the tensors sorted by
    offset and the ``__metadata__`` map. Raises :class:`SafetensorsHeaderError`.
    """
    doc, data_start = _header_document(prefix, file_size, path)
    data_size = file_size - data_start
    metadata: dict[str, str] = {}
    specs: list[TensorSpec] = []
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise SafetensorsHeaderError(path, "__metadata__ must map strings to strings")
            metadata = dict(entry)
            continue
        begin, end, dtype, shape = _tensor_entry(path, name, entry, data_size)
        specs.append(TensorSpec(name, dtype, shape, data_start + begin, data_start + end))
    specs.sort(key=lambda s: (s.start, s.end))
    _check_tiling(path, specs, data_start, file_size)
    return specs, metadata


def _header_document(prefix: bytes, file_size: int, path: str) -> tuple[dict[str, Any], int]:
    """The header's JSON object and where the data area starts."""
    if file_size < 8 or len(prefix) < 8:
        raise SafetensorsHeaderError(path, f"file is {file_size} bytes, shorter than 8")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n == 0:
        raise SafetensorsHeaderError(path, "header length is 0")
    if n > MAX_HEADER_BYTES:
        raise SafetensorsHeaderError(path, f"header length {n} exceeds {MAX_HEADER_BYTES}")
    if 8 + n > file_size:
        raise SafetensorsHeaderError(
            path, f"header length {n} runs past the end of the {file_size}-byte file"
        )
    if len(prefix) < 8 + n:
        raise SafetensorsHeaderError(path, "header truncated")
    raw = bytes(prefix[8 : 8 + n])
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SafetensorsHeaderError(path, "header is not a JSON object")
    return doc, 8 + n


def _tensor_entry(
    path: str, name: str, entry: Any, data_size: int
) -> tuple[int, int, str, tuple[int, ...]]:
    """(begin, end, dtype, shape) of one tensor's header entry, validated."""
    if not isinstance(entry, dict):
        raise SafetensorsHeaderError(path, f"tensor {name!r}: entry is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise SafetensorsHeaderError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsHeaderError(
            path, f"tensor {name!r}: shape must be a list of non-negative ints"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise SafetensorsHeaderError(
            path, f"tensor {name!r}: data_offsets must be [begin, end] ints"
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsHeaderError(
            path,
            f"tensor {name!r}: data_offsets [{begin}, {end}] outside the "
            f"{data_size}-byte data area",
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if expected != end - begin:
        raise SafetensorsHeaderError(
            path,
            f"tensor {name!r}: shape {shape} x {dtype} is {expected} bytes "
            f"but its span is {end - begin}",
        )
    return begin, end, dtype, tuple(shape)


def _check_tiling(path: str, specs: list[TensorSpec], data_start: int, file_size: int) -> None:
    """The tensors, sorted by offset, cover the data area exactly: no overlap, no hole."""
    cursor = data_start
    for spec in specs:
        if spec.start < cursor:
            raise SafetensorsHeaderError(path, f"tensor {spec.name!r} overlaps the one before it")
        if spec.start > cursor:
            raise SafetensorsHeaderError(
                path, f"hole of {spec.start - cursor} bytes before tensor {spec.name!r}"
            )
        cursor = spec.end
    if cursor != file_size:
        raise SafetensorsHeaderError(
            path, f"{file_size - cursor} bytes at the end of the data area belong to no tensor"
        )


def read_header(path: str | Path) -> tuple[list[TensorSpec], dict[str, str]]:
    """Read and validate the header of the file at ``path``."""
    p = str(path)
    with open(p, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        first = f.read(8)
        if len(first) < 8:
            raise SafetensorsHeaderError(p, f"file is {size} bytes, shorter than 8")
        (n,) = struct.unpack("<Q", first)
        # Bound before reading: a hostile length must not make us allocate.
        if 0 < n <= MAX_HEADER_BYTES and 8 + n <= size:
            return parse_header(first + f.read(n), size, path=p)
        return parse_header(first, size, path=p)
