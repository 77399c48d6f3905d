"""vLLM's engine-core process starts from a fork server that has vLLM imported already.

vLLM's CPU platform starts its engine core with multiprocessing's spawn method, and the
engine core spawns its model runner the same way: each is a fresh interpreter that imports
torch and vLLM again, about 6 s apiece on a small CPU, on every load (``helios up``'s ready
time, and every cold start after an eviction). Here the worker starts multiprocessing's
fork server when it starts, with vLLM imported in it (its preload), and vLLM's engine core
is forked from it: a single-threaded process that has only imported modules, so the fork
is as clean as a spawn (no gRPC threads, no CUDA context).

The model runner is still started vLLM's way (spawned by the engine core). OpenMP reads
its thread count and binding once, when its library loads -- in the fork server, as torch
is imported -- so a model runner forked from there kept the server's OpenMP set-up
whatever vLLM set for it: its extra OpenMP thread spun against the engine core, and
tokens/s at one stream fell to 0.39-0.43x of bare vLLM (bench/vllm_compare_bench.py, tiny
model; 40 vs 60 tok/s with SmolLM2). A fresh interpreter reads vLLM's variables as it
loads OpenMP.

A child of the fork server inherits the server's environment, not the worker's: the
process object carries the worker's environment of the moment it is started (vLLM sets
variables such as ``VLLM_CPU_KVCACHE_SPACE`` just before) and the child takes it back
before any of vLLM's code runs in it. And where a spawned engine core outlives a SIGKILLed
worker, one started here watches the worker's sentinel and shuts down (SIGTERM, vLLM's own
shutdown) when the worker is gone.

Only for vLLM's CPU platform, where the spawn is forced; elsewhere vLLM's own choice
stands. Measured (SmolLM2-135M bf16, eager, this 2-core machine): AsyncLLM start 14.5-14.7 s
spawned, 9.0 s with the engine core from the fork server, tokens/s at one stream the same
within this machine's noise (53-61 spawned, 54-58 here).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

logger = logging.getLogger(__name__)

# What the fork server imports before it forks anything: what an engine core imports as
# it starts (vLLM's own imports follow from these).
PRELOAD = (
    "vllm",
    "vllm.v1.engine.core",
    "vllm.v1.executor.multiproc_executor",
    __name__,
)
# vLLM's modules that choose a multiprocessing context (each binds the chooser by name).
CONTEXT_CHOOSER = "get_mp_context"
MP_CONTEXT_USERS = (
    "vllm.utils.system_utils",
    "vllm.v1.engine.utils",
    "vllm.v1.executor.multiproc_executor",
)
# The distribution of vLLM's CPU build (what `make setup` installs without a GPU).
CPU_BUILD = "vllm-cpu"
# How long an engine core whose worker died has to shut down before it is killed.
ORPHAN_GRACE_SECONDS = 5.0


class WorkerEnvironmentProcess(multiprocessing.context.ForkServerProcess):
    """A fork-server process that runs with its parent's environment as it was at start()."""

    _parent_environment: dict[str, str]

    def start(self) -> None:
        self._parent_environment = dict(os.environ)  # pickled with the process object
        super().start()

    def run(self) -> None:
        # The server never routes vLLM through itself (install() runs in the worker
        # only): an engine core started here starts its model runner vLLM's way.
        os.environ.clear()
        os.environ.update(self._parent_environment)
        exit_with_parent()
        super().run()


class WorkerEnvironmentContext(multiprocessing.context.ForkServerContext):
    """multiprocessing's fork-server context whose processes keep the parent's environment."""

    Process = WorkerEnvironmentProcess


FORK_SERVER = WorkerEnvironmentContext()


def start_fork_server() -> None:
    """Start the fork server now (its imports run in it, in parallel with the worker);
    the first engine start waits for them if they are not done."""
    multiprocessing.forkserver.set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()
    logger.info("vllm fork server started", extra={"preload": list(PRELOAD)})


def install() -> None:
    """Route this process's vLLM process starts (the worker's engine cores) through the
    fork server. Idempotent."""
    for name in MP_CONTEXT_USERS:
        module = importlib.import_module(name)
        chooser = getattr(module, CONTEXT_CHOOSER)
        if not getattr(chooser, "helios_fork_server", False):
            setattr(module, CONTEXT_CHOOSER, _through_fork_server(chooser))


def _through_fork_server(vllm_choice: Callable[[], Any]) -> Callable[[], Any]:
    def get_mp_context() -> Any:
        vllm_choice()  # vLLM's own checks and environment set-up still run
        return FORK_SERVER

    get_mp_context.helios_fork_server = True  # type: ignore[attr-defined]
    return get_mp_context


def exit_with_parent(grace_seconds: float = ORPHAN_GRACE_SECONDS) -> None:
    """Shut this process down (SIGTERM, then SIGKILL after ``grace_seconds``) when the
    process that started it exits."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        logger.warning("worker process gone: stopping its vLLM engine process")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="helios-parent-watch", daemon=True).start()


def cpu_build_installed() -> bool:
    """Whether vLLM's CPU build (the ``vllm-cpu`` distribution) is installed: known
    without importing vLLM, so the fork server can start before the worker's imports."""
    try:
        importlib.metadata.distribution(CPU_BUILD)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_runs_on_cpu() -> bool:
    """Whether vLLM's platform here is its CPU one (imports vLLM's platform module)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())
