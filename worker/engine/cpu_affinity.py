"""On vLLM's CPU build, the worker keeps its own threads off the cores of vLLM's model runners.

vLLM's CPU build binds each model runner's OpenMP threads to a set of cores
(``VLLM_CPU_OMP_THREADS_BIND``, ``auto`` by default) and leaves the others to the processes
in front of the engine. Nothing keeps those processes off the runner's cores, though: the
worker's event loop (vLLM's output handling, the gRPC streams) is scheduled wherever the
kernel likes, and every slice it takes on a runner's core delays the next forward step.
After each vLLM engine starts or stops, :func:`keep_off_engine_cpus` moves every thread of
the worker to the cores no runner is bound to (back to all of them when no runner is left),
when there are such cores. Threads the worker starts later inherit the set.

The engine core (the process that schedules each step and drives its runners: a runner's
parent) has its main thread bound to its runners' cores. vLLM leaves it unbound, and that
thread busy-waits (``sched_yield``) on its runners between steps: unbound, the kernel let
it spin on the serving cores, beside the worker, Envoy and the client, which it delayed.
On its runners' cores the two take turns on one core, as they do in fact (a step waits
for the schedule, the schedule for the step). Its other threads (ZMQ input and output:
decoding requests, serialising each step's outputs) stay free, so that their work
overlaps the next step on the serving cores rather than queueing behind it.

Measured (bench set-up of bench/vllm_compare_bench.py, tiny model, 2 cores, runner bound to
core 0): two Helios meshes interleaved (4 ABBA rounds), the worker kept off core 0 vs not:
557 vs 558 / 1132 vs 1053 / 2586 vs 2136 tokens/s at 1 / 4 / 16 streams, TTFT p50 at 16
streams 58.9 vs 68.6 ms. Binding Envoy and the other services of a local mesh the same way
as well (`helios up`, tried and taken out) showed no gain out of the host's noise. The
engine core, all threads on its runner's core vs unbound (a slower host; `--only helios`,
runs ABAB): 215 / 206 vs 197 / 206 tokens/s at 1 stream, 709 / 652 vs 605 / 558 at 4,
1528 / 1425 vs 1153 / 1035 at 16; its own CPU per token fell 3x (its spinning had filled
the serving core's idle time). Its main thread alone vs all its threads (vs unbound, vs bare
vLLM), the stacks interleaved round by round in one run, two runs, tokens/s: 178 / 164 vs
159 / 156 (vs 179 / -, vs 166 / 209) at 1 stream, 541 / 559 vs 459 / 549 (vs 473 / -, vs
420 / 460) at 4, 1159 / 1105 vs 1147 / 1228 (vs 980 / -, vs 880 / 857) at 16.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import psutil

logger = logging.getLogger(__name__)

# How vLLM names its model-runner processes (setproctitle).
RUNNER_TITLE = "VLLM::Worker"
# The cores this process could use when it started, before any narrowing here.
_ALL_CPUS = frozenset(os.sched_getaffinity(0))


def _runners(processes: Iterable[psutil.Process]) -> Iterator[tuple[psutil.Process, set[int]]]:
    """The live vLLM model runners among ``processes``, with the cores each is bound to."""
    for process in processes:
        try:
            # A runner that ended but is not reaped yet (a zombie) holds no core.
            if process.name().startswith(RUNNER_TITLE) and process.status() != psutil.STATUS_ZOMBIE:
                yield process, set(process.cpu_affinity() or ())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def runner_cpus(processes: Iterable[psutil.Process]) -> frozenset[int]:
    """The cores the vLLM model runners among ``processes`` are bound to."""
    return frozenset(core for _, cores in _runners(processes) for core in cores)


def engine_core_cpus(
    processes: Iterable[psutil.Process], worker_pid: int
) -> dict[int, frozenset[int]]:
    """The engine cores among ``processes`` (the runners' parents, other than the
    worker ``worker_pid`` itself), each with the cores of the runners it drives."""
    listed = list(processes)
    known = {process.pid for process in listed}
    drivers: dict[int, set[int]] = {}
    for runner, cores in _runners(listed):
        try:
            parent = runner.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if parent != worker_pid and parent in known and cores:
            drivers.setdefault(parent, set()).update(cores)
    return {pid: frozenset(cores) for pid, cores in drivers.items()}


def serving_cpus(engine: frozenset[int], allowed: frozenset[int] = _ALL_CPUS) -> frozenset[int]:
    """Where the worker's threads should run: ``allowed`` minus the runners' ``engine``
    cores, or all of ``allowed`` when the runners take none or every one of them."""
    rest = allowed - engine
    return rest if engine and rest else allowed


def place_thread(thread_id: int, cores: frozenset[int]) -> None:
    """Bind the one thread ``thread_id`` to ``cores`` (a process id names its main thread;
    its other threads keep their sets, threads it starts later inherit its set)."""
    try:
        os.sched_setaffinity(thread_id, cores)
    except (ProcessLookupError, PermissionError):
        return  # a thread that just ended, or a policy that forbids it


def place_threads(pid: int, cores: frozenset[int]) -> None:
    """Bind every thread of process ``pid`` to ``cores`` (an affinity set on the process
    alone binds its main thread only; threads started later inherit their starter's)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return  # the process ended
    for thread in threads:
        place_thread(int(thread), cores)


def keep_off_engine_cpus() -> frozenset[int]:
    """Move every thread of this process to :func:`serving_cpus` of the model runners
    running now (this process's descendants), and each engine core's main thread to its
    runners' cores; returns the worker's set."""
    descendants = psutil.Process().children(recursive=True)
    engine = runner_cpus(descendants)
    cores = serving_cpus(engine)
    place_threads(os.getpid(), cores)
    drivers = engine_core_cpus(descendants, os.getpid())
    for pid, runner_cores in drivers.items():
        place_thread(pid, runner_cores)  # its main thread, the one that spins
    logger.info(
        "worker threads placed",
        extra={
            "cores": sorted(cores),
            "engine_cores": sorted(engine),
            "engine_core_processes": {str(pid): sorted(c) for pid, c in drivers.items()},
        },
    )
    return cores
