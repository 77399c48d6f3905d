"""The worker keeps its threads off the cores vLLM's CPU build binds its model runners to
(worker/engine/cpu_affinity.py): which cores, found from real processes, and the move of
every thread of a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from worker.engine.cpu_affinity import (
    RUNNER_TITLE,
    engine_core_cpus,
    place_thread,
    place_threads,
    runner_cpus,
    serving_cpus,
)

REPO = Path(__file__).resolve().parents[2]


def test_serving_cpus_are_the_cores_the_runners_leave() -> None:
    every = frozenset({0, 1, 2, 3})
    assert serving_cpus(frozenset({0, 1}), every) == {2, 3}
    assert serving_cpus(frozenset(), every) == every  # no runner: all cores
    assert serving_cpus(every, every) == every  # runners everywhere: nothing to keep off
    assert serving_cpus(frozenset({5}), every) == every - {5}  # a core not ours: ignored


RUNNER_CODE = (
    "import ctypes, os, sys, time;"
    f"ctypes.CDLL(None).prctl(15, {RUNNER_TITLE.encode()!r}, 0, 0, 0);"  # PR_SET_NAME
    "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
    "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"
)


@pytest.fixture
def titled_runner() -> Iterator[psutil.Process]:
    """A child process named as vLLM names its model runners, bound to one core."""
    code = RUNNER_CODE
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield psutil.Process(child.pid)
    finally:
        child.kill()
        child.wait()


def test_runner_cores_are_read_from_processes_named_like_vllms_runners(
    titled_runner: psutil.Process,
) -> None:
    first = min(os.sched_getaffinity(0))
    assert titled_runner.name().startswith(RUNNER_TITLE)
    assert runner_cpus([titled_runner]) == {first}
    assert runner_cpus([psutil.Process()]) == frozenset()  # not a runner


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_every_thread_of_the_worker_moves_off_the_runner_cores() -> None:
    # In a fresh interpreter (the move is process-wide): a thread started before the
    # runner, one started after the move, and the main thread all end up off its core.
    script = """
import json, os, subprocess, sys, threading, time
from worker.engine.cpu_affinity import RUNNER_TITLE, keep_off_engine_cpus
early = threading.Event()
seen = {}
def park(name):
    seen[name] = os.sched_getaffinity(0)
    early.wait()
    seen[name] = os.sched_getaffinity(0)
before = threading.Thread(target=park, args=("before",)); before.start()
code = ("import ctypes, os, time; ctypes.CDLL(None).prctl(15, %r, 0, 0, 0);"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); time.sleep(30)")
runner = subprocess.Popen([sys.executable, "-c", code % RUNNER_TITLE.encode()])
import psutil
child = psutil.Process(runner.pid)
while not (child.name().startswith(RUNNER_TITLE) and len(child.cpu_affinity()) == 1):
    time.sleep(0.01)  # until the child is named and bound as a runner
cores = keep_off_engine_cpus()
main = os.sched_getaffinity(0)
after = threading.Thread(target=park, args=("after",)); after.start()
time.sleep(0.1); early.set(); before.join(); after.join()
runner.kill(); runner.wait()
restored = keep_off_engine_cpus()  # no runner left: every core again
print(json.dumps([sorted(cores), sorted(seen["before"]), sorted(seen["after"]),
                  sorted(main), sorted(restored)]))
"""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    cores, before, after, main, restored = json.loads(out.stdout.strip().splitlines()[-1])
    every = sorted(os.sched_getaffinity(0))
    assert (cores, before, after, main) == (every[1:],) * 4, out.stdout
    assert restored == every


@pytest.fixture
def engine_core() -> Iterator[psutil.Process]:
    """A child process that starts a runner-named process bound to one core and waits on
    it, as vLLM's engine core does (with a thread of its own, as its I/O threads)."""
    code = (
        "import subprocess, sys, threading, time;"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start();"
        f"runner = subprocess.Popen([sys.executable, '-c', {RUNNER_CODE!r}],"
        " stdout=subprocess.PIPE, text=True);"
        "assert runner.stdout.readline() == 'ready\\n';"
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); runner.wait()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield psutil.Process(child.pid)
    finally:
        for process in psutil.Process(child.pid).children():
            process.kill()
        child.kill()
        child.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_engine_cores_main_thread_goes_to_its_runners_cores(
    engine_core: psutil.Process,
) -> None:
    every = os.sched_getaffinity(0)
    first = min(every)
    descendants = psutil.Process().children(recursive=True)
    drivers = engine_core_cpus(descendants, os.getpid())
    assert drivers == {engine_core.pid: {first}}
    place_thread(engine_core.pid, drivers[engine_core.pid])
    others = [t.id for t in engine_core.threads() if t.id != engine_core.pid]
    assert os.sched_getaffinity(engine_core.pid) == {first}
    # Its I/O threads stay free to run beside the runner's steps.
    assert others and all(os.sched_getaffinity(t) == every for t in others)


def test_every_thread_of_a_process_moves(engine_core: psutil.Process) -> None:
    first = min(os.sched_getaffinity(0))
    place_threads(engine_core.pid, frozenset({first}))
    threads = [t.id for t in engine_core.threads()]
    assert len(threads) >= 2
    assert all(os.sched_getaffinity(t) == {first} for t in threads)


def test_placing_an_ended_process_is_a_no_op() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    place_thread(ended.pid, frozenset({min(os.sched_getaffinity(0))}))
    place_threads(ended.pid, frozenset({min(os.sched_getaffinity(0))}))


def test_a_runner_started_by_the_worker_itself_binds_no_engine_core(
    titled_runner: psutil.Process,
) -> None:
    # Its parent is the worker, whose threads belong on the serving cores.
    assert engine_core_cpus([titled_runner], os.getpid()) == {}
    # A parent outside the worker's descendants is not the worker's to move either.
    assert engine_core_cpus([titled_runner], os.getpid() + 1) == {}
