"""Map safetensors files and build torch tensors on the mapping (no read, no copy).

The mapping is private and writable (``MAP_PRIVATE``): pages are the page cache's own
until someone writes to a tensor, which then copies only that page (copy-on-write), so
the tensors behave like ordinary writable CPU tensors. :meth:`MappedFile.populate` faults
the whole mapping in from several threads at once (``MADV_POPULATE_READ``), which turns
a cold load into parallel sequential reads at the disk's bandwidth.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zerocopy.header import DTYPE_SIZES, SafetensorsHeaderError, TensorSpec, read_header

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "CheckpointError",
    "MappedFile",
    "checkpoint_files",
    "load_checkpoint",
    "load_file",
    "load_pretrained",
    "map_file",
]

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
}
assert set(_TORCH_DTYPES) == set(DTYPE_SIZES)

_MADV_POPULATE_READ = 22  # Linux >= 5.14; not exported by Python 3.11's mmap module
_POPULATE_CHUNK = 64 * 1024 * 1024
# One reader, in file order, by default: with MADV_SEQUENTIAL the kernel's readahead then
# streams the file (on this project's test machine 0.63-0.65 s for 1.34 GB cold, where 8
# parallel readers took 0.85 s and dd 0.85-1.8 s). More readers pay off only on storage
# that needs queue depth to reach its bandwidth (NVMe arrays, network block devices).
DEFAULT_POPULATE_THREADS = 1
_PAGE = mmap.PAGESIZE


class CheckpointError(ValueError):
    """A checkpoint directory is inconsistent (missing shard, bad index, duplicate name)."""


_libc: Any = None


def _madvise(address: int, length: int, advice: int) -> int:
    """madvise(2) through ctypes, which releases the GIL so threads fault in parallel.
    Returns 0 or the errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    if _libc.madvise(address, length, advice) != 0:
        return ctypes.get_errno()
    return 0


@dataclass
class MappedFile:
    """One safetensors file mapped into memory; tensors are views of :attr:`buffer`."""

    path: Path
    specs: list[TensorSpec]
    metadata: dict[str, str]
    buffer: mmap.mmap
    address: int
    copied_bytes: int = 0  # bytes copied because a tensor was misaligned (normally 0)
    _anchor: Any = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.buffer)

    def contains(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s bytes lie inside this mapping (proof of zero copy)."""
        ptr = tensor.data_ptr()
        return self.address <= ptr and ptr + tensor.nbytes <= self.address + self.size

    def populate(self, threads: int = DEFAULT_POPULATE_THREADS) -> None:
        """Fault every page in (reading the file if it is cold), ``threads`` at a time."""
        size = self.size
        if size == 0:
            return
        _madvise(self.address, size, mmap.MADV_SEQUENTIAL)
        ranges = [
            (off, min(_POPULATE_CHUNK, size - off)) for off in range(0, size, _POPULATE_CHUNK)
        ]

        def fault(span: tuple[int, int]) -> None:
            off, length = span
            if _madvise(self.address + off, length, _MADV_POPULATE_READ) != 0:
                # Old kernel: touch one byte per page instead.
                view = memoryview(self.buffer)[off : off + length]
                sum(view[i] for i in range(0, length, _PAGE))

        if threads <= 1 or len(ranges) == 1:
            for span in ranges:
                fault(span)
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zerocopy") as pool:
            list(pool.map(fault, ranges))

    def tensor(self, spec: TensorSpec) -> torch.Tensor:
        dtype = _TORCH_DTYPES[spec.dtype]
        if spec.nbytes == 0:
            return torch.empty(spec.shape, dtype=dtype)
        itemsize = DTYPE_SIZES[spec.dtype]
        count = spec.nbytes // itemsize
        if spec.start % itemsize:
            # A misaligned tensor cannot be viewed safely; copy it (and say so).
            self.copied_bytes += spec.nbytes
            raw = torch.frombuffer(
                self.buffer, dtype=torch.uint8, count=spec.nbytes, offset=spec.start
            )
            return raw.clone().view(dtype).reshape(spec.shape)
        flat = torch.frombuffer(self.buffer, dtype=dtype, count=count, offset=spec.start)
        return flat.view(spec.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {spec.name: self.tensor(spec) for spec in self.specs}


def map_file(path: str | Path) -> MappedFile:
    """Validate ``path``'s header, then map it privately (copy-on-write)."""
    p = Path(path)
    specs, metadata = read_header(p)
    fd = os.open(p, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise SafetensorsHeaderError(str(p), "file is empty")
        buf = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    anchor = ctypes.c_char.from_buffer(buf)
    return MappedFile(p, specs, metadata, buf, ctypes.addressof(anchor), _anchor=anchor)


def load_file(
    path: str | Path, *, populate: bool = False, threads: int = DEFAULT_POPULATE_THREADS
) -> dict[str, torch.Tensor]:
    """The state dict of one file, zero-copy. ``populate`` reads it in eagerly."""
    mapped = map_file(path)
    if populate:
        mapped.populate(threads)
    return mapped.tensors()


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards named by the index, or
    ``model.safetensors``. Raises CheckpointError when they are missing or inconsistent."""
    d = Path(model_dir)
    index = d / INDEX_NAME
    if index.is_file():
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index}: not valid JSON: {exc}") from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        names: list[str] = []
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or not shard or "/" in shard or shard.startswith("."):
                raise CheckpointError(f"{index}: tensor {tensor!r} names bad shard {shard!r}")
            if shard not in names:
                names.append(shard)
        files = [d / n for n in names]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: shard {f.name} is missing")
        return files
    single = d / SINGLE_NAME
    if single.is_file():
        return [single]
    raise CheckpointError(f"{d}: neither {INDEX_NAME} nor {SINGLE_NAME}")


def load_checkpoint(
    model_dir: str | Path, *, populate: bool = False, threads: int = DEFAULT_POPULATE_THREADS
) -> tuple[dict[str, torch.Tensor], list[MappedFile]]:
    """The whole state dict of a (possibly sharded) checkpoint, and its mappings."""
    d = Path(model_dir)
    files = checkpoint_files(d)
    weight_map: dict[str, str] | None = None
    if (d / INDEX_NAME).is_file():
        weight_map = json.loads((d / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"]
    state: dict[str, torch.Tensor] = {}
    mapped_files: list[MappedFile] = []
    for f in files:
        mapped = map_file(f)
        if populate:
            mapped.populate(threads)
        for name, tensor in mapped.tensors().items():
            if name in state:
                raise CheckpointError(f"tensor {name!r} appears in more than one shard")
            if weight_map is not None and weight_map.get(name) != f.name:
                raise CheckpointError(
                    f"tensor {name!r} is in {f.name} but the index says {weight_map.get(name)!r}"
                )
            state[name] = tensor
        mapped_files.append(mapped)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"the index names tensors no shard holds: {missing[:5]}")
    return state, mapped_files


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device (no memory, no init cost)
    while buffers (rotary tables, ...) are still computed for real on the CPU."""
    original = torch.nn.Module.register_parameter

    def register(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None:
            meta = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            self._parameters[name] = meta

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def load_pretrained(
    model_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    populate: bool = True,
    threads: int = DEFAULT_POPULATE_THREADS,
) -> PreTrainedModel:
    """A transformers causal LM from a local directory, its weights on the mappings.

    The model is built from config.json with parameters on the meta device, then the
    state dict is assigned (``load_state_dict(assign=True)``): no weight is allocated,
    initialised or copied. Tied weights (``tie_word_embeddings``) are re-tied after the
    assignment. A ``dtype`` other than the checkpoint's converts (and so copies).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(model_dir)
    config = AutoConfig.from_pretrained(d, local_files_only=True, trust_remote_code=False)
    state, mapped = load_checkpoint(d, populate=populate, threads=threads)
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        model_dtype = dtype
    else:
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        model_dtype = floats[0] if floats else torch.float32
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=model_dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise CheckpointError(f"{d}: tensors the model does not have: {result.unexpected_keys[:5]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(f"{d}: checkpoint lacks weights: {still_meta[:5]}")
    model.eval()
    # Kept for callers that want to check (or account for) what lies on the mappings.
    model.zerocopy_mappings = mapped
    return model
