"""Precisions and what a model's weights weigh in each.

Dense precisions (fp32, fp16, bf16) store every parameter at that width. The quantized
ones (fp8, int8, int4) follow how serving stacks (vLLM with GPTQ/AWQ/fp8 checkpoints) lay
weights out: only the linear layers inside the transformer blocks are quantized; the
embeddings, the LM head, norms, biases and MoE routers stay in the 16-bit activation dtype.

Quantization overhead, per linear weight matrix ``out x in``:

* int4 / int8 (GPTQ/AWQ-style group quantization, group size ``g``): every group of ``g``
  input weights of each output column has a fp16 scale (2 bytes) and a zero point packed at
  the weight's own width (``bits / 8`` bytes): ``ceil(in / g) * out * (2 + bits / 8)``
  bytes. ``g = -1`` means one group per column (per-channel). GPTQ's optional ``g_idx``
  (act-order; 4 bytes per input row) is not counted.
* fp8: one fp32 scale per matrix (per-tensor scaling, vLLM's default fp8 path).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.architecture import Architecture, LinearGroup, ceil_div
from runtime.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "DTYPES",
    "KV_DTYPES",
    "NF4",
    "WeightBytes",
    "activation_dtype",
    "dtype_bits",
    "normalize_dtype",
    "weight_bytes",
]

# Bits per value.
DTYPES: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
# QLoRA's base weights (bitsandbytes NF4, double quantization); not a user-facing dtype:
# 4 bits per weight, an 8-bit absmax per block of 64 and an fp32 constant per 256 blocks.
NF4 = "nf4"
NF4_BLOCK = 64
QUANTIZED: frozenset[str] = frozenset({"fp8", "int8", "int4", NF4})
_BITS: dict[str, int] = {**DTYPES, NF4: 4}
# What a KV cache may be stored in (vLLM: auto/fp16/bf16/fp32/fp8 and int8 variants).
KV_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp8", "int8")
DEFAULT_GROUP_SIZE = 128
# Width of the non-quantized parts (and activations) of a quantized model.
ACTIVATION_DTYPE = "bf16"

_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    "uint8": "int8",
    "w8a16": "int8",
    "w4a16": "int4",
    "gptq": "int4",
    "awq": "int4",
}


def normalize_dtype(value: str, field: str, *, allowed: tuple[str, ...] | None = None) -> str:
    """``value`` as one of :data:`DTYPES` (aliases accepted), else InvalidArgumentError."""
    key = value.strip().lower()
    key = _ALIASES.get(key, key)
    options = allowed if allowed is not None else tuple(DTYPES)
    if key not in options:
        raise InvalidArgumentError(
            f"{field}: unknown precision {value!r}; expected one of {', '.join(options)}"
        )
    return key


def dtype_bits(dtype: str) -> int:
    return _BITS[dtype]


def activation_dtype(dtype: str) -> str:
    """The dtype activations (and non-quantized weights) run in for weights in ``dtype``."""
    return ACTIVATION_DTYPE if dtype in QUANTIZED else dtype


def _group_bytes(group: LinearGroup, dtype: str, group_size: int) -> int:
    """Bytes of one linear group, quantization overhead included."""
    if dtype not in QUANTIZED or group.kind == "router":
        return ceil_div(group.params * DTYPES[activation_dtype(dtype)], 8)
    bits = _BITS[dtype]
    data = ceil_div(group.params * bits, 8)
    if dtype == NF4:
        blocks = ceil_div(group.params, NF4_BLOCK)
        return data + blocks + 4 * ceil_div(blocks, 256)
    if dtype == "fp8":
        return data + 4 * group.matrices
    groups_per_column = 1 if group_size == -1 else ceil_div(group.in_features, group_size)
    per_group_bits = 16 + bits  # fp16 scale + packed zero point
    overhead = ceil_div(groups_per_column * group.out_features * group.matrices * per_group_bits, 8)
    return data + overhead


@dataclass(frozen=True)
class WeightBytes:
    """Weight memory per part, for one GPU of a layout (or the whole model)."""

    embedding: int
    lm_head: int
    linear: int  # attention + dense MLP + shared experts
    experts: int  # routed experts
    other: int  # norms, biases, routers

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.linear + self.experts + self.other


def weight_bytes(
    arch: Architecture,
    dtype: str,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    expert_parallel: int = 1,
) -> WeightBytes:
    """Weight bytes of ``arch`` in ``dtype``; with parallelism, those of the fullest GPU.

    Tensor parallelism splits the linear layers and the (vocab-parallel) embedding and LM
    head; norms, biases and routers are replicated. Routed experts are split over
    ``expert_parallel`` GPUs when it is > 1, else over the TP group. Pipeline parallelism
    gives each stage ``ceil(layers / pp)`` layers; the first stage also holds the
    embedding and the last the LM head, and the fuller of the two is reported (both when
    pp is 1).
    """
    dense_bits = DTYPES[activation_dtype(dtype)]
    linear = experts = router = 0
    for g in arch.linear_groups:
        size = _group_bytes(g, dtype, group_size)
        if g.kind == "expert":
            experts += size
        elif g.kind == "router":
            router += size
        else:
            linear += size
    tp, pp = tensor_parallel, pipeline_parallel
    ep = expert_parallel if expert_parallel > 1 else tp
    stage_share = ceil_div(arch.num_layers, pp)  # layers on the fullest stage
    layers = max(arch.num_layers, 1)

    def per_stage(total: int, split: int) -> int:
        return ceil_div(ceil_div(total * stage_share, layers), split)

    embedding = ceil_div(ceil_div(arch.embedding_params * dense_bits, 8), tp)
    lm_head = ceil_div(ceil_div(arch.lm_head_params * dense_bits, 8), tp)
    if pp > 1:  # embedding on the first stage, LM head on the last: keep the larger
        if embedding >= lm_head:
            lm_head = 0
        else:
            embedding = 0
    other = ceil_div(arch.other_params * dense_bits, 8) + router
    return WeightBytes(
        embedding=embedding,
        lm_head=lm_head,
        linear=per_stage(linear, tp),
        experts=per_stage(experts, ep),
        other=per_stage(other, 1),
    )
