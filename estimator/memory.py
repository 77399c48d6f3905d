"""One memory estimate: weights, KV cache, activations, overhead, optimizer, gradients.

:func:`estimate_memory` combines the parts for an :class:`EstimateParams` (precision,
batch x length, mode, parallel layout, training options). Each part's formula is here or in
the module it names, with its assumptions, so a person can check every number (the
request, its defaults and its validation are :mod:`estimator.estimate_params`):

* weights: :mod:`estimator.precision` (exact parameter inventory x precision);
* KV cache: :mod:`estimator.kvcache` (vLLM's per-layer formula);
* activations, inference: the peak of one prefill chunk of
  ``T = min(batch x seq, prefill_chunk_tokens)`` tokens going through one layer,
  ``T x (2 x hidden + max(attention width, MLP width)) x act bytes / tp`` (the residual
  stream and its normed copy, plus the widest intermediate: q, k, v and the attention
  output, or gate + up + activated for gated MLPs, top-k experts for MoE), plus the
  logits of the chunk's last tokens in fp32 (``seqs x vocab x 4 x 2``: logits and probs);
* activations, training (flash attention, no dropout): per layer and token the tensors
  kept for backward, ``3 x hidden + qkv width + attn out + MLP (4 x I gated, 2 x I
  else)`` elements; with activation checkpointing only each layer's input
  (``hidden``) is kept plus one layer's full set while it is recomputed; plus fp32
  logits and their gradient (``b x s x vocab x 8``);
* overhead: :mod:`estimator.gpus` (CUDA context per GPU family, NCCL buffers when the
  layout spans GPUs, allocator fragmentation on the activation peak);
* training state per trainable parameter: gradients in the weights' dtype; Adam/AdamW
  two fp32 moments (8 bytes) plus fp32 master weights (4) when weights are 16-bit;
  8-bit Adam 2 bytes of moments (+ master); SGD one fp32 momentum (+ master). LoRA
  adapters are fp32 (weights 4 + gradients 4 + optimizer). ZeRO over ``num_gpus``
  data-parallel ranks partitions the optimizer (stage 1), + gradients (2), + weights (3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from estimator.architecture import Architecture, ceil_div
from estimator.estimate_params import EstimateParams, validate_params
from estimator.gpus import (
    ALLOCATOR_FRAGMENTATION,
    CUDA_CONTEXT_BYTES,
    DEFAULT_FAMILY,
    NCCL_BYTES,
    Gpu,
    find_gpu,
)
from estimator.kvcache import KvCapacity, kv_bytes_per_token, kv_cache_bytes, kv_capacity
from estimator.precision import (
    DTYPES,
    NF4,
    activation_dtype,
    dtype_bits,
    weight_bytes,
)

__all__ = [
    "Estimate",
    "GpuFit",
    "MemoryParts",
    "estimate_memory",
    "lora_parameter_count",
]


@dataclass(frozen=True)
class MemoryParts:
    """Bytes per part; ``total`` is their sum."""

    weights: int = 0
    kv_cache: int = 0
    activations: int = 0
    overhead: int = 0
    optimizer: int = 0
    gradients: int = 0

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.kv_cache
            + self.activations
            + self.overhead
            + self.optimizer
            + self.gradients
        )

    def scaled(self, n: int) -> MemoryParts:
        return MemoryParts(*(getattr(self, f) * n for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class GpuFit:
    """How the estimate sits on one GPU of the catalog (per GPU of the layout)."""

    gpu: str
    memory_bytes: int
    usable_bytes: int  # memory x gpu_memory_utilization
    required_bytes: int
    fits: bool
    headroom_bytes: int  # usable - required (negative when it does not fit)
    kv: KvCapacity  # what the memory left after the rest holds (inference)


@dataclass(frozen=True)
class Estimate:
    """An answer: the whole model (``model``) and one GPU of the layout (``per_gpu``)."""

    params: EstimateParams  # normalized (defaults filled in)
    model_type: str
    family: str
    confidence: str
    parameter_count: int
    active_parameter_count: int
    trainable_parameter_count: int
    kv_cache_bytes_per_token: int
    model: MemoryParts
    per_gpu: MemoryParts
    gpu_count: int
    fit: GpuFit | None
    notes: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- the parts


def _bytes(dtype: str) -> int:
    return dtype_bits(dtype) // 8


def _inference_activations(arch: Architecture, p: EstimateParams) -> int:
    tokens = min(p.batch_size * p.max_seq_len, p.prefill_chunk_tokens)
    seqs = min(p.batch_size, tokens)
    h = arch.hidden_size
    if arch.mla is not None:
        m = arch.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        attn = arch.num_heads * (qk + m.qk_nope_head_dim + 2 * m.v_head_dim) + (
            m.kv_lora_rank + m.qk_rope_head_dim
        )
    else:
        attn = (2 * arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    mlp = 3 * arch.intermediate_size
    if arch.moe is not None:
        moe = arch.moe
        mlp = max(
            mlp if arch.moe.moe_layers < arch.num_layers else 0,
            3 * (moe.experts_per_token * moe.expert_intermediate_size)
            + 3 * moe.shared_intermediate_size,
        )
    width = 2 * h + max(attn, mlp)
    act = _bytes(activation_dtype(p.dtype))
    layer_peak = ceil_div(tokens * width * act, p.tensor_parallel_size)
    logits = seqs * arch.vocab_size * 4 * 2
    return layer_peak + logits


def _training_activations(arch: Architecture, p: EstimateParams) -> int:
    tokens = p.batch_size * p.max_seq_len
    h = arch.hidden_size
    if arch.mla is not None:
        m = arch.mla
        attn = (
            arch.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim) * 2
            + arch.num_heads * (m.v_head_dim * 2)
            + m.kv_lora_rank
            + m.qk_rope_head_dim
        )
    else:
        attn = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim + (
            arch.num_heads * arch.head_dim
        )
    gated = arch.family in ("llama", "deepseek", "generic")
    inter = arch.intermediate_size
    if arch.moe is not None:
        inter = (
            arch.moe.experts_per_token * arch.moe.expert_intermediate_size
            + arch.moe.shared_intermediate_size
        )
    per_token_layer = 3 * h + attn + (4 if gated else 2) * inter
    act = _bytes(activation_dtype(p.dtype))
    layers = ceil_div(arch.num_layers, p.pipeline_parallel_size)
    if p.activation_checkpointing:
        kept = tokens * (layers * h + per_token_layer) * act
    else:
        kept = tokens * layers * per_token_layer * act
    logits = tokens * arch.vocab_size * 8  # fp32 logits and their gradient
    return ceil_div(kept, p.tensor_parallel_size) + logits


def _optimizer_bytes_per_param(optimizer: str, master: bool) -> float:
    moments = {"adamw": 8.0, "adam": 8.0, "adamw_8bit": 2.0, "adam_8bit": 2.0, "sgd": 4.0}
    extra = 0.0
    if optimizer.endswith("_8bit"):
        extra = 2 * 4 / 2048  # bitsandbytes: one fp32 absmax per 2048-value block per moment
    return moments[optimizer] + extra + (4.0 if master else 0.0)


def lora_parameter_count(arch: Architecture, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable LoRA parameters: ``rank x (in + out)`` per targeted matrix."""
    wanted = set(targets)
    return sum(
        rank * (g.in_features + g.out_features) * g.layers * g.copies
        for g in arch.linear_groups
        if g.name in wanted and g.kind != "router"
    )


def _overhead(family: str, gpus: int, activations: int) -> int:
    nccl = NCCL_BYTES if gpus > 1 else 0
    return CUDA_CONTEXT_BYTES[family] + nccl + math.ceil(activations * ALLOCATOR_FRAGMENTATION)


def _parts(
    arch: Architecture, p: EstimateParams, family: str, *, tp: int, pp: int, ep: int, dp: int
) -> tuple[MemoryParts, int]:
    """The parts on the fullest GPU of a layout; and the trainable parameter count."""
    q = replace(p, tensor_parallel_size=tp, pipeline_parallel_size=pp, expert_parallel_size=ep)
    layout = {"tensor_parallel": tp, "pipeline_parallel": pp, "expert_parallel": ep}
    gpus = tp * pp * dp
    if p.mode == "inference":
        weights = weight_bytes(arch, p.dtype, group_size=p.quant_group_size, **layout).total
        kv = kv_cache_bytes(
            arch,
            dtype_bits(p.kv_cache_dtype),
            p.batch_size,
            p.max_seq_len,
            tensor_parallel=tp,
            pipeline_parallel=pp,
        )
        acts = _inference_activations(arch, q)
        parts = MemoryParts(
            weights=weights, kv_cache=kv, activations=acts, overhead=_overhead(family, gpus, acts)
        )
        return parts, 0

    acts = _training_activations(arch, q)
    fp32_params = weight_bytes(arch, "fp32", **layout).total // 4  # parameters on this GPU
    if p.mode == "training":
        trainable = arch.parameter_count
        weights = weight_bytes(arch, p.dtype, **layout).total
        master = DTYPES[p.dtype] < 32
        grads = fp32_params * _bytes(p.dtype)
        opt = math.ceil(fp32_params * _optimizer_bytes_per_param(p.optimizer, master))
    else:
        base = NF4 if p.mode == "qlora" else p.dtype
        group = 64 if p.mode == "qlora" else p.quant_group_size
        trainable = lora_parameter_count(arch, p.lora_rank, p.lora_target_modules)
        local = ceil_div(trainable * ceil_div(arch.num_layers, pp), max(arch.num_layers, 1))
        local = ceil_div(local, tp)
        weights = weight_bytes(arch, base, group_size=group, **layout).total + 4 * local
        grads = 4 * local
        opt = math.ceil(local * _optimizer_bytes_per_param(p.optimizer, master=False))
    if p.zero_stage >= 1:
        opt = ceil_div(opt, dp)
    if p.zero_stage >= 2:
        grads = ceil_div(grads, dp)
    if p.zero_stage >= 3:
        weights = ceil_div(weights, dp)
    parts = MemoryParts(
        weights=weights,
        activations=acts,
        overhead=_overhead(family, gpus, acts),
        optimizer=opt,
        gradients=grads,
    )
    return parts, trainable


def _fit(arch: Architecture, p: EstimateParams, gpu: Gpu, per_gpu: MemoryParts) -> GpuFit:
    usable = int(gpu.memory_bytes * p.gpu_memory_utilization)
    required = per_gpu.total
    if p.mode == "inference":
        available = usable - (required - per_gpu.kv_cache)
        kv = kv_capacity(
            arch,
            dtype_bits(p.kv_cache_dtype),
            available,
            p.max_seq_len,
            tensor_parallel=p.tensor_parallel_size,
            pipeline_parallel=p.pipeline_parallel_size,
        )
    else:
        kv = KvCapacity(0, 0, 0, 0)
    return GpuFit(
        gpu=gpu.name,
        memory_bytes=gpu.memory_bytes,
        usable_bytes=usable,
        required_bytes=required,
        fits=required <= usable,
        headroom_bytes=usable - required,
        kv=kv,
    )


def estimate_memory(
    arch: Architecture, params: EstimateParams, *, validated: bool = False
) -> Estimate:
    """The estimate for ``arch`` under ``params`` (validated here unless ``validated``)."""
    p = params if validated else validate_params(arch, params)
    gpu = find_gpu(p.gpu) if p.gpu else None
    family = gpu.family if gpu else DEFAULT_FAMILY
    tp, pp, ep = p.tensor_parallel_size, p.pipeline_parallel_size, p.expert_parallel_size
    dp = p.num_gpus if p.mode != "inference" else 1
    model, trainable = _parts(arch, p, family, tp=1, pp=1, ep=1, dp=1)
    if (tp, pp, ep, dp) == (1, 1, 1, 1):
        per_gpu = model
    else:
        per_gpu, _ = _parts(arch, p, family, tp=tp, pp=pp, ep=ep, dp=dp)
    notes = list(arch.notes)
    if arch.max_position_embeddings and p.max_seq_len > arch.max_position_embeddings:
        notes.append(
            f"max_seq_len {p.max_seq_len} exceeds the model's max_position_embeddings"
            f" ({arch.max_position_embeddings})"
        )
    if any(w is not None for w in arch.layer_windows):
        notes.append("sliding-window layers hold at most their window of tokens")
    return Estimate(
        params=p,
        model_type=arch.model_type,
        family=arch.family,
        confidence=arch.confidence,
        parameter_count=arch.parameter_count,
        active_parameter_count=arch.active_parameter_count,
        trainable_parameter_count=trainable,
        kv_cache_bytes_per_token=kv_bytes_per_token(arch, dtype_bits(p.kv_cache_dtype)),
        model=model,
        per_gpu=per_gpu,
        gpu_count=tp * pp * dp,
        fit=_fit(arch, p, gpu, per_gpu) if gpu else None,
        notes=tuple(notes),
    )
