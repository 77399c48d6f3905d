"""Placing an estimate on the catalog: recommendations, compatibility, what to change.

A *layout* is a GPU type and a count: counts 1, 2, 4, 8 are tensor-parallel degrees;
16, 32, 64 are TP 8 x pipeline stages (vLLM's usual multi-node shape). A MIG slice is only
ever used alone. A layout fits when the fullest GPU's estimate is within
``memory x gpu_memory_utilization``; its headroom is what is left there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from estimator.architecture import Architecture
from estimator.estimate_params import EstimateParams, validate_params
from estimator.gpus import CATALOG, Gpu
from estimator.kvcache import kv_heads_per_gpu
from estimator.memory import estimate_memory
from estimator.precision import DTYPES, dtype_bits
from runtime.errors import InvalidArgumentError

__all__ = [
    "Recommendation",
    "Recommendations",
    "Suggestion",
    "compatibility",
    "optimize",
    "recommend",
]

_COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Recommendation:
    """A layout that fits, with what it leaves free."""

    gpu: str
    count: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    memory_bytes: int  # per GPU
    required_bytes: int  # per GPU (fullest one)
    headroom_bytes: int  # per GPU: usable - required
    price_per_hour: float  # the whole layout
    kv_cache_tokens: int  # KV capacity left for the cache (inference)
    max_concurrent_sequences: int


@dataclass(frozen=True)
class Recommendations:
    """Layouts cheapest first; ``reason`` says why when there are none."""

    items: tuple[Recommendation, ...]
    reason: str = ""


def _layouts(arch: Architecture, gpu: Gpu) -> Iterable[tuple[int, int]]:
    for count in _COUNTS:
        if count > gpu.max_count:
            return
        tp, pp = (count, 1) if count <= 8 else (8, count // 8)
        if arch.num_heads % tp or pp > arch.num_layers:
            continue
        try:
            kv_heads_per_gpu(arch, tp)
        except InvalidArgumentError:
            continue
        yield tp, pp


def recommend(
    models: Sequence[tuple[Architecture, EstimateParams]],
    *,
    catalog: Sequence[Gpu] = CATALOG,
    smallest_only: bool = False,
) -> Recommendations:
    """Every GPU / MIG slice / count that holds all ``models`` together, cheapest first.

    ``smallest_only``: per GPU type, only the smallest count that fits.
    Several models are placed on the same GPUs (each split by the same TP/PP).
    """
    if not models:
        raise InvalidArgumentError("model_ids: give at least one model")
    validated = [(arch, validate_params(arch, p)) for arch, p in models]
    items: list[Recommendation] = []
    for gpu in catalog:
        layouts = None
        for arch, _ in validated:
            mine = set(_layouts(arch, gpu))
            layouts = mine if layouts is None else layouts & mine
        for tp, pp in sorted(layouts or (), key=lambda t: t[0] * t[1]):
            rec = _evaluate_many(validated, gpu, tp, pp)
            if rec is not None:
                items.append(rec)
                if smallest_only:
                    break
    items.sort(key=lambda r: (r.price_per_hour, -r.headroom_bytes, r.gpu))
    if items:
        return Recommendations(tuple(items))
    largest = max(catalog, key=lambda g: g.memory_bytes)
    need = sum(
        estimate_memory(arch, replace(p, gpu=largest.name), validated=True).per_gpu.total
        for arch, p in validated
    )
    return Recommendations(
        (),
        reason=(
            f"fits nowhere in the catalog: needs {need / 2**30:.1f} GiB on one"
            f" {largest.name} ({largest.memory_bytes / 2**30:.1f} GiB) and no layout up to"
            f" {max(_COUNTS)} GPUs brings it under gpu_memory_utilization; lower the"
            " precision, max_seq_len or batch_size"
        ),
    )


def _evaluate_many(
    models: Sequence[tuple[Architecture, EstimateParams]], gpu: Gpu, tp: int, pp: int
) -> Recommendation | None:
    """The layout holding every model at once (per-GPU needs add up), or None."""
    usable = 0
    required = 0
    overheads: list[int] = []
    tokens = sequences = 0
    for arch, p in models:
        q = replace(p, gpu=gpu.name, tensor_parallel_size=tp, pipeline_parallel_size=pp)
        est = estimate_memory(arch, q, validated=True)
        assert est.fit is not None
        usable = est.fit.usable_bytes
        required += est.fit.required_bytes
        overheads.append(est.per_gpu.overhead)
        tokens, sequences = est.fit.kv.tokens, est.fit.kv.max_concurrent_sequences
    if len(models) > 1:
        # One CUDA context per GPU process: count the largest overhead once. The memory
        # left is shared, so no single model's KV capacity is reported.
        required -= sum(overheads) - max(overheads)
        tokens = sequences = 0
    if required > usable:
        return None
    return Recommendation(
        gpu=gpu.name,
        count=tp * pp,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        memory_bytes=gpu.memory_bytes,
        required_bytes=required,
        headroom_bytes=usable - required,
        price_per_hour=round(gpu.price_per_hour * tp * pp, 4),
        kv_cache_tokens=tokens,
        max_concurrent_sequences=sequences,
    )


def compatibility(
    arch: Architecture, params: EstimateParams, *, catalog: Sequence[Gpu] = CATALOG
) -> Recommendations:
    """Per GPU type of the catalog, the smallest layout that runs the model."""
    return recommend([(arch, params)], catalog=catalog, smallest_only=True)


@dataclass(frozen=True)
class Suggestion:
    """One change (or a combination) and what the estimate becomes with it."""

    change: str  # human-readable
    params: EstimateParams
    required_bytes: int  # per GPU after the change
    fits: bool


def _candidates(arch: Architecture, p: EstimateParams) -> list[tuple[str, EstimateParams]]:
    out: list[tuple[str, EstimateParams]] = []
    if p.mode == "inference":
        if dtype_bits(p.kv_cache_dtype) > 8:
            out.append(("kv_cache_dtype fp8", replace(p, kv_cache_dtype="fp8")))
        for dtype in ("fp8", "int8", "int4"):
            if DTYPES[dtype] < DTYPES[p.dtype]:
                kv = p.kv_cache_dtype
                out.append((f"dtype {dtype}", replace(p, dtype=dtype, kv_cache_dtype=kv)))
    else:
        if not p.activation_checkpointing:
            out.append(("activation_checkpointing on", replace(p, activation_checkpointing=True)))
        if p.mode == "training":
            if not p.optimizer.endswith("_8bit") and p.optimizer != "sgd":
                out.append(("optimizer adamw_8bit", replace(p, optimizer="adamw_8bit")))
            out.append(("mode lora", replace(p, mode="lora", lora_target_modules=())))
        if p.mode in ("training", "lora"):
            out.append(("mode qlora", replace(p, mode="qlora", lora_target_modules=())))
        if p.num_gpus > 1 and p.zero_stage < 3:
            out.append(("zero_stage 3", replace(p, zero_stage=3)))
    for tp in (2, 4, 8):
        if tp > p.tensor_parallel_size and arch.num_heads % tp == 0:
            try:
                kv_heads_per_gpu(arch, tp)
            except InvalidArgumentError:
                continue
            out.append((f"tensor_parallel_size {tp}", replace(p, tensor_parallel_size=tp)))
    seq = p.max_seq_len // 2
    while seq >= 256:
        out.append((f"max_seq_len {seq}", replace(p, max_seq_len=seq)))
        seq //= 2
    batch = p.batch_size // 2
    while batch >= 1:
        out.append((f"batch_size {batch}", replace(p, batch_size=batch)))
        batch //= 2
    return out


def optimize(
    arch: Architecture, params: EstimateParams, target_bytes: int, *, limit: int = 8
) -> list[Suggestion]:
    """Changes that bring the per-GPU total within ``target_bytes``, least disruptive first.

    Single changes are tried in the order of :func:`_candidates` (cheap to accept first:
    KV precision, weight precision, parallelism, then shorter sequences, smaller batches);
    when none is enough alone, changes are combined greedily (each step takes the change
    that saves the most) until it fits or nothing is left.
    """
    if target_bytes <= 0:
        raise InvalidArgumentError(f"target_bytes: must be > 0, got {target_bytes}")
    p = validate_params(arch, params)

    def need(q: EstimateParams) -> int:
        return estimate_memory(arch, q, validated=True).per_gpu.total

    current = need(p)
    if current <= target_bytes:
        return [Suggestion("no change needed", p, current, True)]
    singles = []
    for change, q in _candidates(arch, p):
        q = validate_params(arch, q)
        singles.append(Suggestion(change, q, need(q), False))
    fitting = [replace(s, fits=True) for s in singles if s.required_bytes <= target_bytes]
    # Keep, per kind of change, only the least disruptive that fits (the largest length...).
    seen: set[str] = set()
    result: list[Suggestion] = []
    for s in fitting:
        kind = s.change.split()[0]
        if kind in seen:
            continue
        seen.add(kind)
        result.append(s)
    if result:
        return result[:limit]
    # Greedy combination.
    state, changes, best = p, [], current
    for _ in range(8):
        options = []
        for change, q in _candidates(arch, state):
            q = validate_params(arch, q)
            options.append((need(q), change, q))
        if not options:
            break
        total, change, q = min(options, key=lambda o: o[0])
        if total >= best:
            break
        state, best = q, total
        changes.append(change)
        if best <= target_bytes:
            return [Suggestion(", ".join(changes), state, best, True)]
    return [Suggestion(", ".join(changes) or "nothing helps", state, best, False)]
