"""The phases of a vLLM engine's start, timed where they run: in vLLM's model-runner
processes, read back by the worker once the engine is up.

vLLM's engine core drives each model-runner worker through named methods (``load_model``,
``determine_available_memory``, ``initialize_from_config``, ``compile_or_warm_up_model``)
on its worker wrapper. :func:`install` (run in every vLLM process by the plugin entry
point, worker/engine/vllm_plugin.py) times those calls per phase of
worker/load_phases.py -- ``weights``, ``kv_cache`` (memory profiling and the cache's
allocation), ``compile`` (torch.compile or the eager warm-up) -- and adds a method that
returns them; :func:`engine_phases` calls it through vLLM's ``collective_rpc``. What the
phases leave of the engine's start is its ``engine_start`` (processes, imports, tokenizer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# vLLM's worker methods -> the load phase they are part of.
PHASE_OF_METHOD = {
    "load_model": "weights",
    "determine_available_memory": "kv_cache",
    "initialize_from_config": "kv_cache",
    "compile_or_warm_up_model": "compile",
}
# The method, added to vLLM's worker wrapper, that returns this process's phases.
READ_METHOD = "helios_load_phases"

# Seconds per phase in this process (a model-runner process serves one engine).
_seconds: dict[str, float] = {}


def install() -> None:
    """Time the worker methods of PHASE_OF_METHOD in this process. Idempotent."""
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    if hasattr(WorkerWrapperBase, READ_METHOD):
        return
    for method, phase in PHASE_OF_METHOD.items():
        own = vars(WorkerWrapperBase).get(method)
        setattr(WorkerWrapperBase, method, _timed(method, phase, own))
    setattr(WorkerWrapperBase, READ_METHOD, read_phases)


def _timed(method: str, phase: str, own: Callable[..., Any] | None) -> Callable[..., Any]:
    """``method`` of the wrapper (``own``), or the wrapped worker's when the wrapper only
    forwards it, timed into ``phase``."""

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        target = own.__get__(self) if own is not None else getattr(self.worker, method)
        started = time.perf_counter()
        try:
            return target(*args, **kwargs)
        finally:
            _seconds[phase] = _seconds.get(phase, 0.0) + time.perf_counter() - started

    timed.__name__ = method
    return timed


def read_phases(_wrapper: Any = None) -> dict[str, float]:
    """This process's phases so far (the method added to vLLM's worker wrapper)."""
    return dict(_seconds)


async def engine_phases(llm: Any) -> dict[str, float]:
    """The phases of ``llm``'s start (an AsyncLLM): per phase, the slowest of its
    model-runner processes; empty (and a warning) if they cannot be read."""
    try:
        per_worker = await llm.collective_rpc(READ_METHOD)
    except Exception as exc:  # an engine without the plugin: the load goes on untimed
        logger.warning("vllm load phases unavailable", extra={"error": repr(exc)})
        return {}
    phases: dict[str, float] = {}
    for seconds in per_worker:
        for phase, value in seconds.items():
            phases[phase] = max(phases.get(phase, 0.0), float(value))
    return phases
