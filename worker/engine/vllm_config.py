"""The vLLM engine's knobs as a worker exposes them (VllmConfig); vllm_engine.py turns
them into vLLM's AsyncEngineArgs. Importing this never imports vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgumentError
from worker.engine.vllm_lora import VllmLora

__all__ = ["COMPILE_MODES", "KV_ROLES", "VllmConfig"]


# What VllmConfig.compile may be (the worker's --compile also takes "auto").
COMPILE_MODES = ("eager", "full")


@dataclass(frozen=True)
class VllmConfig:
    """The engine knobs a worker exposes (None: vLLM's own default)."""

    dtype: str = "auto"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    cpu_kvcache_space_gib: float | None = None
    enable_prefix_caching: bool = True
    quantization: str | None = None
    tensor_parallel_size: int = 1
    seed: int = 0
    # Prefill/decode disaggregation through vLLM's shared-storage KV connector (opt-in):
    # "prefill" saves prompt KV caches under kv_shared_path, "decode" loads them from it,
    # "both" does either. None: combined mode only.
    kv_role: str | None = None
    kv_shared_path: Path | None = None
    # The KV cache in bytes (vLLM's kv_cache_memory_bytes; on a GPU it overrides
    # gpu_memory_utilization). Set by the worker's memory-aware sizing, which also
    # records what the engine's memory adds up to (planned_bytes).
    kv_cache_memory_bytes: int | None = None
    planned_bytes: int | None = None
    # "full": vLLM's torch.compile (and CUDA graphs on a GPU), its compile cache reused
    # across starts; "eager": no compilation (enforce_eager), the fastest start.
    # worker.compile_mode resolves the worker's --compile auto to one of these.
    compile: str = "full"
    # How vLLM reads the weights: "helios" (worker/engine/vllm_loader.py: safetensors
    # through the zero-copy mapping) or one of vLLM's own load formats ("auto", ...).
    load_format: str = "helios"
    # vLLM's sleep mode (enable_sleep_mode): an unloaded model can be kept asleep, its
    # weights offloaded to host RAM. GPU builds only (the CPU platform has none).
    sleep_mode: bool = False
    # Whether the worker's threads move off the cores vLLM binds its model runners to
    # as an engine starts or stops (worker/engine/cpu_affinity.py).
    keep_off_engine_cpus: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # LoRA adapters (worker/engine/vllm_lora.py); off unless max_loras > 0.
    lora: VllmLora = field(default_factory=VllmLora)

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise InvalidArgumentError(
                f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"
            )
        if self.kv_role is not None and self.kv_role not in KV_ROLES:
            raise InvalidArgumentError(
                f"kv_role must be one of {sorted(KV_ROLES)}, got {self.kv_role!r}"
            )
        if (self.kv_role is None) != (self.kv_shared_path is None):
            raise InvalidArgumentError("kv_role and kv_shared_path must be set together")


# Helios' role names -> vLLM's KVTransferConfig.kv_role.
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer", "both": "kv_both"}


def base_engine_kwargs(model_dir: Path, config: VllmConfig) -> dict[str, Any]:
    """The AsyncEngineArgs keywords every engine of a worker gets (generating or pooling):
    the model, dtype, parallelism, seed, compile mode and the batch knobs that are set."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": config.dtype,
        "tensor_parallel_size": config.tensor_parallel_size,
        "seed": config.seed,
        "disable_log_stats": True,  # our stat logger still runs; vLLM's own do not
        "enable_log_requests": False,
        "enforce_eager": config.compile == "eager",
        "load_format": config.load_format,
    }
    if config.sleep_mode:
        kwargs["enable_sleep_mode"] = True
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "quantization"):
        value = getattr(config, key)
        if value is not None:
            kwargs[key] = value
    if config.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    return kwargs
