"""`helios up` binds the mesh's non-worker processes (Envoy, proxy, ...) to the cores the
workers' vLLM model runners leave (cli/placement.py): real processes, every thread."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from cli.placement import ServingPlacement, placement_wanted
from worker.engine.cpu_affinity import RUNNER_TITLE

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")

# A worker: its child is named as vLLM names its model runners and bound to one core.
WORKER = (
    "import subprocess, sys, time;"
    "code = ('import ctypes, os, time; ctypes.CDLL(None).prctl(15, %r, 0, 0, 0);'"
    " 'os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); time.sleep(60)');"
    f"subprocess.Popen([sys.executable, '-c', code % {RUNNER_TITLE.encode()!r}]);"
    "time.sleep(60)"
)
# Another process of the mesh (Envoy, say) with a second thread.
OTHER = (
    "import threading, time;threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
)


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def threads_cores(pid: int) -> list[list[int]]:
    return [sorted(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")]


def until(check: object, within: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def processes() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    worker, other = spawn(WORKER), spawn(OTHER)
    try:
        yield worker, other
    finally:
        for process in (worker, other):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def runner_up(worker: subprocess.Popen[bytes]) -> bool:
    children = psutil.Process(worker.pid).children()
    return any(
        c.name().startswith(RUNNER_TITLE)
        and c.status() != psutil.STATUS_ZOMBIE
        and len(c.cpu_affinity() or ()) == 1
        for c in children
    )


@TWO_CORES
def test_the_other_processes_leave_the_runner_cores_and_come_back(
    processes: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]],
) -> None:
    worker, other = processes
    every = sorted(os.sched_getaffinity(0))
    until(lambda: runner_up(worker) and len(os.listdir(f"/proc/{other.pid}/task")) == 2)
    workers = [worker.pid]
    placement = ServingPlacement(lambda: workers, lambda: [other.pid])
    assert sorted(placement.place()) == every[1:]
    assert threads_cores(other.pid) == [every[1:], every[1:]]
    assert threads_cores(worker.pid) == [every]  # the worker places itself
    for child in psutil.Process(worker.pid).children():
        child.kill()  # the engine stopped: no runner left
    until(lambda: not runner_up(worker))
    assert sorted(placement.place()) == every
    assert threads_cores(other.pid) == [every, every]


def test_the_workers_setting_decides_for_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HELIOS_WORKER_SERVING_CPUS", "HELIOS_SERVING_CPUS"):
        monkeypatch.delenv(name, raising=False)
    assert placement_wanted()  # auto, the worker's default
    monkeypatch.setenv("HELIOS_SERVING_CPUS", "all")
    assert not placement_wanted()
    monkeypatch.setenv("HELIOS_WORKER_SERVING_CPUS", "auto")  # the worker's own wins
    assert placement_wanted()
