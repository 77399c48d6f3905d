"""worker/memory.py: NVML is probed once per process; without it the report is the
configured capacity, answered without blocking."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from worker import memory


@pytest.fixture(autouse=True)
def unprobed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(memory, "_nvml", memory._UNPROBED)
    yield


@dataclass
class _Info:
    total: int
    free: int


class StandInNvml(types.ModuleType):
    """What pynvml's API looks like on a host with ``devices`` (this machine has no GPU,
    so no driver to talk to): counts inits, shutdowns and device lookups."""

    def __init__(self, devices: list[tuple[int, int]], init_error: bool = False) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.init_error = init_error
        self.inits = self.shutdowns = self.queries = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Info:
        self.queries += 1
        return _Info(*self.devices[handle])


def test_without_pynvml_the_configured_capacity_is_reported_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert memory.memory_report_blocks()  # not probed yet: may block
    report = memory.memory_report(1000, 300)
    assert report == memory.MemoryReport(1000, 700, "configured")
    assert not memory.memory_report_blocks()
    assert memory.memory_report(1000, 2000).free_bytes == 0


def test_nvml_is_initialised_once_and_summed_over_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = StandInNvml([(80, 30), (40, 10)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    for _ in range(5):
        assert memory.memory_report(1, 0) == memory.MemoryReport(120, 40, "nvml")
    assert (nvml.inits, nvml.shutdowns, nvml.queries) == (1, 0, 10)
    assert memory.memory_report_blocks()  # NVML calls stay in a thread
    nvml.devices[0] = (80, 5)  # free memory is read on every report
    assert memory.nvml_memory() == (120, 15)


@pytest.mark.parametrize(
    "nvml", [StandInNvml([], init_error=True), StandInNvml([])], ids=["no driver", "no device"]
)
def test_a_failed_probe_is_not_retried(monkeypatch: pytest.MonkeyPatch, nvml: StandInNvml) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    for _ in range(3):
        assert memory.nvml_memory() is None
    assert nvml.inits == 1
    assert nvml.shutdowns == (0 if nvml.init_error else 1)
    assert not memory.memory_report_blocks()
