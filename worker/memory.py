"""Accelerator memory for heartbeats: the GPU's own figures through NVML when a GPU and
pynvml are present, else the worker's configured capacity less the loaded weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryReport:
    total_bytes: int
    free_bytes: int
    source: str  # "nvml" or "configured"


def nvml_memory() -> tuple[int, int] | None:
    """(total, free) bytes summed over the visible GPUs, or None without GPU/pynvml."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = free = 0
            for index in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
                total += int(info.total)
                free += int(info.free)
            return (total, free) if total else None
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no driver, no device: fall back to the configuration
        logger.debug("nvml unavailable", extra={"error": str(exc)})
        return None


def memory_report(capacity_bytes: int, used_bytes: int) -> MemoryReport:
    gpu = nvml_memory()
    if gpu is not None:
        return MemoryReport(gpu[0], gpu[1], "nvml")
    return MemoryReport(capacity_bytes, max(0, capacity_bytes - used_bytes), "configured")
