"""`helios up` keeps the mesh's own processes off the cores of vLLM's model runners.

A worker on vLLM's CPU build moves its own threads off its model runners' cores
(worker/engine/cpu_affinity.py); the other processes of a local mesh -- Envoy, which
carries every token of every warm request, and the proxy, registry, storaged and
estimator -- are not the worker's to move. `helios up` started them, so it places them:
every :data:`PLACE_INTERVAL_S` it reads the cores the runners under its workers are
bound to and binds every thread of the other processes to the rest (to all cores again
when no runner is left, or when the runners take every core). Only what changed is
written: a process is placed when it is new (started or restarted) or the set moved.
The workers' own setting decides for the whole mesh: with ``HELIOS_WORKER_SERVING_CPUS``
(or ``HELIOS_SERVING_CPUS``) ``all``, neither the workers nor `helios up` place anything
(an operator who sets affinities, cgroups or cpusets themselves).

Measured on this 2-core machine (tiny model, vLLM runner bound to core 0, two meshes
interleaved): the serving processes kept on core 1 gave +21% / +7% / +20% tokens/s at
1 / 4 / 16 streams, +10% / +10% / +10% with the order of the meshes swapped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import psutil

from runtime.config import env_default
from worker.engine.cpu_affinity import place_threads, runner_cpus, serving_cpus

logger = logging.getLogger("helios.up")

# How often the runners' cores are read again: an engine starts or stops with a model
# load or unload, which takes seconds.
PLACE_INTERVAL_S = 5.0


def placement_wanted() -> bool:
    """Whether the workers place their threads (their ``serving_cpus`` setting, read as
    they read it), and so `helios up` the other processes."""
    return env_default("worker", "serving_cpus", "auto") == "auto"


class ServingPlacement:
    """Binds the mesh's non-worker processes to the cores no model runner is bound to."""

    def __init__(
        self,
        workers: Callable[[], Iterable[int]],
        others: Callable[[], Iterable[int]],
    ) -> None:
        """``workers``: the pids of the worker processes now (their descendants hold the
        runners); ``others``: the pids to place (asked again each round: restarts)."""
        self._workers = workers
        self._others = others
        self._placed: dict[int, frozenset[int]] = {}

    def place(self) -> frozenset[int]:
        """One round: the cores the other processes are bound to now."""
        descendants: list[psutil.Process] = []
        for pid in self._workers():
            try:
                descendants.extend(psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        engine = runner_cpus(descendants)
        cores = serving_cpus(engine)
        placed = {}
        for pid in self._others():
            if self._placed.get(pid) != cores:
                place_threads(pid, cores)
                logger.info(
                    "process placed",
                    extra={"pid": pid, "cores": sorted(cores), "engine_cores": sorted(engine)},
                )
            placed[pid] = cores
        self._placed = placed
        return cores

    async def run(self, interval_s: float = PLACE_INTERVAL_S) -> None:
        """Place every ``interval_s`` until cancelled."""
        while True:
            await asyncio.to_thread(self.place)
            await asyncio.sleep(interval_s)
