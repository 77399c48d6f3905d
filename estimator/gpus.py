"""The GPU catalog: memory, family (for overhead constants), and an indicative price.

Memory is what ``nvidia-smi`` reports as the total for the board (MiB x 2^20), since that
is what the CUDA allocator can address. MIG slices get ``0.95 x`` their profile's nominal
GiB (e.g. A100-40GB ``1g.5gb`` -> 4.75 GiB, as reported 4864 MiB); a slice is always used
alone (no NCCL across MIG instances), so it is only ever recommended as a count of 1.

Prices are indicative on-demand USD per GPU-hour, only used to order recommendations
(cheapest first); a MIG slice costs its share (compute slices / 7) of the board.

Per-family overhead constants (:data:`CUDA_CONTEXT_BYTES`) are the memory a process loses
before its first tensor: CUDA context, cuBLAS/cuDNN workspaces and kernels' module images,
as seen in vLLM's start-up profiling ("non-torch memory") on each generation. They are
documented approximations, except Hopper's, measured on an H200 lent to a session
(bench/estimator_gpu_check.py; CI has no GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import InvalidArgumentError

__all__ = [
    "ALLOCATOR_FRAGMENTATION",
    "CATALOG",
    "CUDA_CONTEXT_BYTES",
    "DEFAULT_FAMILY",
    "NCCL_BYTES",
    "Gpu",
    "find_gpu",
]

MiB = 1 << 20
GiB = 1 << 30

CUDA_CONTEXT_BYTES: dict[str, int] = {
    "volta": 300 * MiB,  # V100
    "turing": 300 * MiB,  # T4
    "ampere": 450 * MiB,  # A100, A10G
    "ada": 450 * MiB,  # L4, L40S
    # H100, H200. Measured on an H200 (torch 2.11 + CUDA 13): 695 MiB outside PyTorch's
    # allocator after a bf16 prefill, beyond the 615 MiB NVML counts used before any
    # process (inside the gpu_memory_utilization headroom). 550 MiB was assumed before.
    "hopper": 700 * MiB,
    "cpu": 0,  # the CPU reference engine
}
# Without a GPU named, estimates assume the largest context (no GPU is under-estimated).
DEFAULT_FAMILY = "hopper"
# NCCL communicator buffers per GPU when a layout spans several GPUs.
NCCL_BYTES = 256 * MiB
# PyTorch's caching allocator rounds and fragments transient tensors: this share of the
# activation peak is added. Weights and the KV cache are a few large up-front tensors.
ALLOCATOR_FRAGMENTATION = 0.05


@dataclass(frozen=True)
class Gpu:
    """One catalog entry: a board or a MIG profile of one."""

    name: str
    memory_bytes: int
    family: str
    price_per_hour: float
    mig_of: str | None = None

    @property
    def is_mig(self) -> bool:
        return self.mig_of is not None

    @property
    def max_count(self) -> int:
        return 1 if self.is_mig else 64


def _board(name: str, mib: int, family: str, price: float) -> Gpu:
    return Gpu(name, mib * MiB, family, price)


_BOARDS: tuple[Gpu, ...] = (
    _board("T4", 15360, "turing", 0.35),
    _board("L4", 23034, "ada", 0.80),
    _board("A10G", 23028, "ampere", 1.01),
    _board("V100-16GB", 16160, "volta", 1.20),
    _board("V100-32GB", 32510, "volta", 1.60),
    _board("L40S", 46068, "ada", 1.85),
    _board("A100-40GB", 40960, "ampere", 2.10),
    _board("A100-80GB", 81920, "ampere", 2.60),
    _board("H100-80GB", 81559, "hopper", 3.90),
    _board("H200-141GB", 143771, "hopper", 4.80),
)

# A100-80GB and H100-80GB offer the same MIG profiles.
_MIG_80GB: tuple[tuple[str, int, float], ...] = (
    ("1g.10gb", 1, 10),
    ("1g.20gb", 1, 20),
    ("2g.20gb", 2, 20),
    ("3g.40gb", 3, 40),
    ("4g.40gb", 4, 40),
    ("7g.80gb", 7, 80),
)

# MIG profiles per board: (profile, compute slices, nominal GiB).
_MIG_PROFILES: dict[str, tuple[tuple[str, int, float], ...]] = {
    "A100-40GB": (
        ("1g.5gb", 1, 5),
        ("2g.10gb", 2, 10),
        ("3g.20gb", 3, 20),
        ("4g.20gb", 4, 20),
        ("7g.40gb", 7, 40),
    ),
    "A100-80GB": _MIG_80GB,
    "H100-80GB": _MIG_80GB,
    "H200-141GB": (
        ("1g.18gb", 1, 18),
        ("1g.35gb", 1, 35),
        ("2g.35gb", 2, 35),
        ("3g.71gb", 3, 71),
        ("4g.71gb", 4, 71),
        ("7g.141gb", 7, 141),
    ),
}


def _mig_slices() -> tuple[Gpu, ...]:
    boards = {b.name: b for b in _BOARDS}
    out = []
    for parent, profiles in _MIG_PROFILES.items():
        board = boards[parent]
        for profile, slices, gib in profiles:
            out.append(
                Gpu(
                    name=f"{parent}:MIG-{profile}",
                    memory_bytes=int(gib * 0.95 * GiB),
                    family=board.family,
                    price_per_hour=round(board.price_per_hour * slices / 7, 4),
                    mig_of=parent,
                )
            )
    return tuple(out)


CATALOG: tuple[Gpu, ...] = (*_BOARDS, *_mig_slices())
_BY_NAME: dict[str, Gpu] = {g.name.lower(): g for g in CATALOG}


def find_gpu(name: str, field: str = "gpu") -> Gpu:
    """The catalog entry called ``name`` (case-insensitive), else InvalidArgumentError."""
    gpu = _BY_NAME.get(name.strip().lower())
    if gpu is None:
        boards = ", ".join(b.name for b in _BOARDS)
        raise InvalidArgumentError(
            f"{field}: unknown GPU {name!r}; expected one of {boards}"
            " or a MIG profile such as A100-80GB:MIG-1g.10gb"
        )
    return gpu
