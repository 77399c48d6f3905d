"""Accelerator memory for heartbeats: the GPU's own figures through NVML when a GPU and
pynvml are present, else the worker's configured capacity less the loaded weights.

NVML is probed once per process (import, ``nvmlInit``, a device count) and, when
present, stays initialised: a worker answers a heartbeat every second, and a failed
import retried each time walks ``sys.path`` while an init/shutdown pair per beat costs
milliseconds on a GPU host."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_UNPROBED: Any = object()
# pynvml (initialised), None (no pynvml, driver or device), or _UNPROBED.
_nvml: Any = _UNPROBED
_probe_lock = threading.Lock()


@dataclass(frozen=True)
class MemoryReport:
    total_bytes: int
    free_bytes: int
    source: str  # "nvml" or "configured"


def _load_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver: fall back to the configuration
        logger.debug("nvml unavailable", extra={"error": str(exc)})
        return None
    try:
        if pynvml.nvmlDeviceGetCount() > 0:
            return pynvml
    except Exception as exc:
        logger.debug("nvml unavailable", extra={"error": str(exc)})
    pynvml.nvmlShutdown()
    return None


def _probed_nvml() -> Any:
    global _nvml
    with _probe_lock:
        if _nvml is _UNPROBED:
            _nvml = _load_nvml()
        return _nvml


def nvml_memory() -> tuple[int, int] | None:
    """(total, free) bytes summed over the visible GPUs, or None without GPU/pynvml.
    The first call probes NVML (it may block: call it from a thread)."""
    nvml = _probed_nvml()
    if nvml is None:
        return None
    try:
        total = free = 0
        for index in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
            total += int(info.total)
            free += int(info.free)
    except Exception as exc:  # a device gone or a driver error: this beat uses the config
        logger.debug("nvml query failed", extra={"error": str(exc)})
        return None
    return (total, free) if total else None


def memory_report_blocks() -> bool:
    """Whether :func:`memory_report` may block (NVML present, or not probed yet): then it
    belongs in a thread. Without NVML the report is arithmetic, answered inline (a thread
    hand-off per heartbeat was a fifth of an idle worker's heartbeat CPU)."""
    return _nvml is not None


def memory_report(capacity_bytes: int, used_bytes: int) -> MemoryReport:
    gpu = nvml_memory()
    if gpu is not None:
        return MemoryReport(gpu[0], gpu[1], "nvml")
    return MemoryReport(capacity_bytes, max(0, capacity_bytes - used_bytes), "configured")
