"""What to estimate: :class:`EstimateParams`, its limits and defaults, and
:func:`validate_params`, which checks a request against a model's :class:`Architecture`
and fills in every default (the checkpoint's dtype, the model's context length, LoRA's
default target modules). Errors are :class:`InvalidArgumentError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from estimator.architecture import Architecture
from estimator.gpus import find_gpu
from estimator.precision import (
    DEFAULT_GROUP_SIZE,
    KV_DTYPES,
    QUANTIZED,
    activation_dtype,
    normalize_dtype,
)
from runtime.errors import InvalidArgumentError

__all__ = [
    "MODES",
    "OPTIMIZERS",
    "EstimateParams",
    "validate_params",
]

MODES: tuple[str, ...] = ("inference", "training", "lora", "qlora")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "adamw_8bit", "adam_8bit", "sgd")
DEFAULT_PREFILL_CHUNK = 2048  # vLLM's default max_num_batched_tokens with chunked prefill
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
DEFAULT_SEQ_LEN = 2048  # when the config has no max_position_embeddings
DEFAULT_LORA_RANK = 16
MAX_BATCH = 1 << 20
MAX_SEQ_LEN = 1 << 24
MAX_TOKENS = 1 << 32  # batch x length beyond this is a mistake, not a workload
MAX_PARALLEL = 1024

_FUSED_ATTENTION = ("qkv_proj", "c_attn", "query_key_value")


@dataclass(frozen=True)
class EstimateParams:
    """What to estimate; zero / empty values mean "the default" (proto3 friendly)."""

    dtype: str = ""  # "": the checkpoint's fp16/bf16 (config torch_dtype), else bf16
    kv_cache_dtype: str = ""  # "": the weights' dtype (bf16 for quantized weights)
    batch_size: int = 1
    max_seq_len: int = 0  # 0: the model's max_position_embeddings
    mode: str = "inference"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    expert_parallel_size: int = 1
    quant_group_size: int = DEFAULT_GROUP_SIZE  # -1: per channel
    gpu: str = ""  # catalog name: sets the overhead family and adds a fit report
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK
    optimizer: str = "adamw"
    lora_rank: int = DEFAULT_LORA_RANK
    lora_target_modules: tuple[str, ...] = ()  # (): q_proj and v_proj (or fused qkv)
    activation_checkpointing: bool = False
    zero_stage: int = 0
    num_gpus: int = 1  # data-parallel ranks (ZeRO partitions over them)

    def key(self) -> tuple[object, ...]:
        """Every field, for cache keys."""
        return (
            self.dtype,
            self.kv_cache_dtype,
            self.batch_size,
            self.max_seq_len,
            self.mode,
            self.tensor_parallel_size,
            self.pipeline_parallel_size,
            self.expert_parallel_size,
            self.quant_group_size,
            self.gpu,
            self.gpu_memory_utilization,
            self.prefill_chunk_tokens,
            self.optimizer,
            self.lora_rank,
            self.lora_target_modules,
            self.activation_checkpointing,
            self.zero_stage,
            self.num_gpus,
        )


def _positive(value: int, field_name: str, default: int, maximum: int) -> int:
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgumentError(f"{field_name}: must be in 1..{maximum}, got {value}")
    return value


def validate_params(arch: Architecture, params: EstimateParams) -> EstimateParams:
    """``params`` checked against ``arch`` with every default filled in.

    Raises InvalidArgumentError naming the field.
    """
    mode = (params.mode or "inference").strip().lower()
    if mode not in MODES:
        raise InvalidArgumentError(
            f"mode: unknown mode {params.mode!r}; expected one of {', '.join(MODES)}"
        )
    dtype, kv_dtype = _dtypes(arch, params, mode)
    batch = _positive(params.batch_size, "batch_size", 1, MAX_BATCH)
    default_len = arch.max_position_embeddings or DEFAULT_SEQ_LEN
    seq = _positive(params.max_seq_len, "max_seq_len", default_len, MAX_SEQ_LEN)
    if batch * seq > MAX_TOKENS:
        raise InvalidArgumentError(
            f"batch_size x max_seq_len: {batch} x {seq} = {batch * seq} tokens exceeds {MAX_TOKENS}"
        )
    tp, pp, ep = _parallel_layout(arch, params)
    group = params.quant_group_size or DEFAULT_GROUP_SIZE
    if group != -1 and not 1 <= group <= 1 << 16:
        raise InvalidArgumentError(
            f"quant_group_size: must be -1 (per channel) or in 1..65536, got {group}"
        )
    util = params.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if not (0 < util <= 1) or math.isnan(util):
        raise InvalidArgumentError(f"gpu_memory_utilization: must be in (0, 1], got {util}")
    gpu = find_gpu(params.gpu).name if params.gpu else ""
    chunk = _positive(
        params.prefill_chunk_tokens, "prefill_chunk_tokens", DEFAULT_PREFILL_CHUNK, MAX_SEQ_LEN
    )
    optimizer = (params.optimizer or "adamw").strip().lower()
    if optimizer not in OPTIMIZERS:
        raise InvalidArgumentError(
            f"optimizer: unknown optimizer {params.optimizer!r}; expected one of"
            f" {', '.join(OPTIMIZERS)}"
        )
    rank = _positive(params.lora_rank, "lora_rank", DEFAULT_LORA_RANK, 1 << 16)
    targets = tuple(t.strip() for t in params.lora_target_modules if t.strip())
    if mode in ("lora", "qlora"):
        targets = _lora_targets(arch, targets)
    if not 0 <= params.zero_stage <= 3:
        raise InvalidArgumentError(f"zero_stage: must be 0..3, got {params.zero_stage}")
    dp = _positive(params.num_gpus, "num_gpus", 1, MAX_PARALLEL * 64)
    return EstimateParams(
        dtype=dtype,
        kv_cache_dtype=kv_dtype,
        batch_size=batch,
        max_seq_len=seq,
        mode=mode,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        expert_parallel_size=ep,
        quant_group_size=group,
        gpu=gpu,
        gpu_memory_utilization=util,
        prefill_chunk_tokens=chunk,
        optimizer=optimizer,
        lora_rank=rank,
        lora_target_modules=targets,
        activation_checkpointing=params.activation_checkpointing,
        zero_stage=params.zero_stage,
        num_gpus=dp,
    )


def _dtypes(arch: Architecture, params: EstimateParams, mode: str) -> tuple[str, str]:
    """The weights' dtype (the compute dtype for qlora) and the KV cache's."""
    # Default as vLLM's dtype="auto": the checkpoint's 16-bit dtype; fp32 runs in bf16.
    auto = arch.checkpoint_dtype if arch.checkpoint_dtype in ("fp16", "bf16") else "bf16"
    dtype = normalize_dtype(params.dtype or auto, "dtype")
    if mode == "training" and dtype in QUANTIZED:
        raise InvalidArgumentError(
            f"dtype: full fine-tuning needs fp32, fp16 or bf16 weights, got {dtype};"
            " use mode qlora for 4-bit base weights"
        )
    if mode == "qlora":
        dtype = activation_dtype(dtype)  # qlora: dtype is the compute dtype
    kv_default = activation_dtype(dtype)
    kv_dtype = normalize_dtype(
        params.kv_cache_dtype or kv_default, "kv_cache_dtype", allowed=KV_DTYPES
    )
    return dtype, kv_dtype


def _parallel_layout(arch: Architecture, params: EstimateParams) -> tuple[int, int, int]:
    """Tensor, pipeline and expert parallel sizes, each checked against the model."""
    tp = _positive(params.tensor_parallel_size, "tensor_parallel_size", 1, MAX_PARALLEL)
    pp = _positive(params.pipeline_parallel_size, "pipeline_parallel_size", 1, MAX_PARALLEL)
    ep = _positive(params.expert_parallel_size, "expert_parallel_size", 1, MAX_PARALLEL)
    if arch.num_heads % tp:
        raise InvalidArgumentError(
            f"tensor_parallel_size: {tp} does not divide the model's {arch.num_heads}"
            " attention heads"
        )
    if pp > arch.num_layers:
        raise InvalidArgumentError(
            f"pipeline_parallel_size: {pp} exceeds the model's {arch.num_layers} layers"
        )
    if ep > 1 and (arch.moe is None or arch.moe.num_experts % ep):
        raise InvalidArgumentError(
            f"expert_parallel_size: {ep} needs a mixture-of-experts model whose expert count"
            " it divides"
        )
    return tp, pp, ep


def _lora_targets(arch: Architecture, targets: tuple[str, ...]) -> tuple[str, ...]:
    names = list(dict.fromkeys(g.name for g in arch.linear_groups if g.kind != "router"))
    if not targets:
        default = tuple(n for n in ("q_proj", "v_proj") if n in names)
        fused = tuple(n for n in _FUSED_ATTENTION if n in names)
        mla = tuple(n for n in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa") if n in names)
        return default or fused or mla or tuple(names)
    if targets in (("all-linear",), ("all",)):
        return tuple(n for n in names if not _is_expert(arch, n))
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise InvalidArgumentError(
            f"lora_target_modules: {', '.join(unknown)} not in this model; its linear"
            f" modules are {', '.join(names)} (or all-linear)"
        )
    return targets


def _is_expert(arch: Architecture, name: str) -> bool:
    return all(g.kind == "expert" for g in arch.linear_groups if g.name == name)
