"""Fills the vLLM knobs an operator left unset from the estimator's numbers and the
memory this worker has left (the rules are in :mod:`worker.batch_sizing`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from runtime.errors import HeliosError
from worker.batch_sizing import (
    CPU_PLANNED_SEQS,
    EngineLimits,
    ModelMemory,
    derive_limits,
)
from worker.engine.vllm_engine import VllmConfig

logger = logging.getLogger(__name__)

GIB = 1024**3
# Of a GPU's free memory, the share a new model may plan for (vLLM's own default
# utilization): the rest absorbs allocator fragmentation and CUDA graphs.
GPU_FREE_SHARE = 0.9


class ModelMemorySource(Protocol):
    """The estimator: what one replica of the model in ``model_dir`` needs."""

    async def model_memory(
        self, model_dir: Path, dtype: str, tensor_parallel_size: int = 1
    ) -> ModelMemory: ...


class VllmSizer:
    """Sizes each model's vLLM engine to the memory it has on this worker."""

    def __init__(
        self,
        source: ModelMemorySource,
        budget: Callable[[str], int],
        gpu_free: Callable[[], int | None],
    ) -> None:
        """``budget(model)``: bytes the worker's capacity leaves for the model;
        ``gpu_free()``: free GPU bytes, None without a GPU (the budget then applies)."""
        self._source = source
        self._budget = budget
        self._gpu_free = gpu_free

    async def size(self, model: str, model_dir: Path, config: VllmConfig) -> VllmConfig:
        """``config`` with its unset limits filled in. The estimator failing leaves them
        to vLLM (logged); a model that cannot fit raises ResourceExhaustedError."""
        try:
            memory = await self._source.model_memory(
                model_dir, config.dtype, config.tensor_parallel_size
            )
        except HeliosError as exc:
            logger.warning(
                "no memory estimate; vLLM's defaults size the engine",
                extra={"model": model, "error": exc.message},
            )
            return config
        gpu_free = self._gpu_free()
        budget = int(gpu_free * GPU_FREE_SHARE) if gpu_free is not None else self._budget(model)
        kv_given = _kv_given(config, on_gpu=gpu_free is not None)
        limits = derive_limits(
            model,
            memory,
            budget,
            kv_cache_bytes=kv_given,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            # On a CPU, sized to the planned batch, not the whole budget (issue 14: a 7 GiB
            # KV cache took 25 s to allocate and left no room for a second model). A
            # GPU's is filled, as vLLM does: allocating it is quick and more KV cache
            # means more prefix-cache hits.
            planned_seqs=CPU_PLANNED_SEQS if gpu_free is None else None,
        )
        _log_limits(model, budget, memory, limits)
        changes: dict[str, object] = {
            "max_model_len": limits.max_model_len,
            "max_num_seqs": limits.max_num_seqs,
            "planned_bytes": limits.footprint_bytes,
        }
        if kv_given is None:
            changes["kv_cache_memory_bytes"] = limits.kv_cache_bytes
        return replace(config, **changes)  # type: ignore[arg-type]


def _kv_given(config: VllmConfig, *, on_gpu: bool) -> int | None:
    """The KV cache the operator fixed, in bytes, if any."""
    if config.kv_cache_memory_bytes is not None:
        return config.kv_cache_memory_bytes
    if on_gpu:
        return None
    if config.cpu_kvcache_space_gib is not None:
        return int(config.cpu_kvcache_space_gib * GIB)
    # vLLM's own variable, read by its CPU platform, wins over anything we pass.
    env = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    return int(env) * GIB if env.strip().isdigit() and int(env) > 0 else None


def _log_limits(model: str, budget: int, memory: ModelMemory, limits: EngineLimits) -> None:
    logger.info(
        "engine limits from the memory estimate",
        extra={
            "model": model,
            "budget_bytes": budget,
            "weights_bytes": memory.weights_bytes,
            "kv_bytes_per_token": memory.kv_bytes_per_token,
            "kv_cache_bytes": limits.kv_cache_bytes,
            "kv_cache_tokens": limits.kv_cache_tokens,
            "max_model_len": limits.max_model_len,
            "max_num_seqs": limits.max_num_seqs,
            "footprint_bytes": limits.footprint_bytes,
        },
    )
