"""KV cache sizes, following vLLM's per-layer KV cache specs.

Per token and per attention layer, vLLM stores (``vllm/v1/kv_cache_interface.py``):

* standard / grouped-query / multi-query attention (``FullAttentionSpec``):
  ``2 (K and V) x num_kv_heads x head_dim x dtype bytes``;
* DeepSeek multi-head latent attention (``MLAAttentionSpec``, one shared latent "head"):
  ``(kv_lora_rank + qk_rope_head_dim) x dtype bytes``, no factor 2;
* sliding-window layers (``SlidingWindowSpec``) hold at most the window's tokens.

Memory is paged in blocks of :data:`BLOCK_SIZE` tokens. Under tensor parallelism each GPU
holds ``num_kv_heads / tp`` heads (at least one: heads are replicated when tp exceeds
them); the MLA latent is replicated on every TP rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.architecture import Architecture, ceil_div
from runtime.errors import InvalidArgumentError

__all__ = [
    "BLOCK_SIZE",
    "KvCapacity",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "kv_capacity",
    "kv_heads_per_gpu",
]

BLOCK_SIZE = 16  # vLLM's default --block-size (tokens per KV page)


def kv_heads_per_gpu(arch: Architecture, tensor_parallel: int) -> int:
    """KV heads each GPU holds; raises when the TP degree cannot split them (vLLM's rule)."""
    if arch.mla is not None or tensor_parallel == 1:
        return arch.num_kv_heads
    kv = arch.num_kv_heads
    if kv % tensor_parallel and tensor_parallel % kv:
        raise InvalidArgumentError(
            f"tensor_parallel_size: {tensor_parallel} neither divides nor is a multiple of"
            f" the model's {kv} KV heads"
        )
    return max(1, kv // tensor_parallel)


def _layer_token_bytes(arch: Architecture, kv_bytes_per_value: int, tensor_parallel: int) -> int:
    """Bytes of one token in one attention layer, on one GPU."""
    if arch.mla is not None:
        return (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * kv_bytes_per_value
    return 2 * kv_heads_per_gpu(arch, tensor_parallel) * arch.head_dim * kv_bytes_per_value


def kv_bytes_per_token(
    arch: Architecture, kv_bits: int, *, tensor_parallel: int = 1, pipeline_parallel: int = 1
) -> int:
    """KV cache of one token across all layers (of the fullest stage), windows ignored.

    This is vLLM's per-token formula: ``2 x layers x kv_heads x head_dim x bytes``
    (MLA: ``(kv_lora_rank + qk_rope_head_dim) x layers x bytes``).
    """
    layers = ceil_div(arch.num_layers, pipeline_parallel)
    return layers * _layer_token_bytes(arch, kv_bits // 8, tensor_parallel)


def kv_cache_bytes(
    arch: Architecture,
    kv_bits: int,
    batch_size: int,
    seq_len: int,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    paged: bool = False,
) -> int:
    """KV cache of ``batch_size`` sequences of ``seq_len`` tokens.

    Sliding-window layers hold ``min(seq_len, window)`` tokens. ``paged``: round each
    sequence's tokens up to whole blocks per layer, as vLLM allocates them.
    """
    per_layer = _layer_token_bytes(arch, kv_bits // 8, tensor_parallel)
    total = 0
    for window in arch.layer_windows:
        tokens = seq_len if window is None else min(seq_len, window)
        if paged:
            tokens = ceil_div(tokens, BLOCK_SIZE) * BLOCK_SIZE
        total += tokens
    # Pipeline stages hold their share of the layers; report the fullest stage.
    share = ceil_div(arch.num_layers, pipeline_parallel)
    total = ceil_div(total * share, max(arch.num_layers, 1))
    return batch_size * per_layer * total


@dataclass(frozen=True)
class KvCapacity:
    """What a GPU's memory left after weights, activations and overhead holds."""

    available_bytes: int  # for the KV cache, on each GPU
    blocks: int  # vLLM pages of BLOCK_SIZE tokens
    tokens: int  # blocks x BLOCK_SIZE
    max_concurrent_sequences: int  # of max_seq_len tokens each


def kv_capacity(
    arch: Architecture,
    kv_bits: int,
    available_bytes: int,
    max_seq_len: int,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> KvCapacity:
    """The reverse of :func:`kv_cache_bytes`: how much KV cache fits in ``available_bytes``.

    Like vLLM: blocks = available // (BLOCK_SIZE x bytes of a token across all layers);
    concurrency = available // one full-length sequence's paged KV cache.
    """
    available = max(0, available_bytes)
    per_token = kv_bytes_per_token(
        arch, kv_bits, tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel
    )
    if per_token == 0:  # no attention layers: nothing to cache
        return KvCapacity(available, 0, 0, 0)
    blocks = available // (BLOCK_SIZE * per_token)
    per_sequence = kv_cache_bytes(
        arch,
        kv_bits,
        1,
        max_seq_len,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        paged=True,
    )
    sequences = available // per_sequence if per_sequence else 0
    return KvCapacity(available, blocks, blocks * BLOCK_SIZE, sequences)
