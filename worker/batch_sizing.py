"""Memory-aware engine limits: the KV cache, the longest sequence and the batch a model
gets on this worker, from the estimator's numbers and the memory the worker has left.

vLLM sizes none of this from a budget of ours. On a GPU it takes a share of the whole
device (gpu_memory_utilization), on a CPU a fixed KV space (VLLM_CPU_KVCACHE_SPACE, 4 GiB
by default), and it refuses to start when one sequence of the model's full context does
not fit in that KV cache. So, for each knob the operator left unset:

- KV cache: what the planned batch needs (``planned_seqs`` sequences: one of the whole
  max_model_len, the others of PLANNING_SEQ_TOKENS), within the budget left after the
  weights, the activations and the runtime overhead -- so that allocating it takes
  seconds, not the whole capacity's tens of seconds, and other models keep room. Without a
  plan (``planned_seqs`` None), the whole budget left.
- max_model_len: the model's context, shortened to what the KV cache can hold (a 128k
  context model on a small budget still starts, serving shorter sequences).
- max_num_seqs: as many sequences of PLANNING_SEQ_TOKENS (or of max_model_len, if
  shorter) as the KV cache holds, capped at vLLM's own default. Paged KV holds what each
  sequence really uses and vLLM preempts when it runs out, so the batch is planned for
  typical lengths, not the worst case.

Pure functions of numbers: no protobuf, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import ResourceExhaustedError

# vLLM's default max_num_seqs; more never helps a single engine here.
MAX_NUM_SEQS_CAP = 256
# Prompt + output tokens a typical request holds in the KV cache, for batch planning.
PLANNING_SEQ_TOKENS = 1024
# vLLM pages the KV cache in blocks (16 tokens on GPUs, 128 on its CPU backend) and keeps
# one block aside (its null block). Tokens are planned in 128-token blocks, one fewer
# than fit, so that what we promise is what vLLM finds.
KV_BLOCK_TOKENS = 128
# The batch planned on a CPU: a few cores saturate long before vLLM's 256 sequences, and
# the worker's fair admission queue holds the rest (worker/admission.py).
CPU_PLANNED_SEQS = 32


@dataclass(frozen=True)
class ModelMemory:
    """What the estimator says one model needs (one GPU of the layout)."""

    weights_bytes: int
    activation_bytes: int
    overhead_bytes: int
    kv_bytes_per_token: int
    context_tokens: int  # the model's max_position_embeddings


@dataclass(frozen=True)
class EngineLimits:
    """The limits a model's engine starts with, and the memory they add up to."""

    kv_cache_bytes: int
    kv_cache_tokens: int
    max_model_len: int
    max_num_seqs: int
    footprint_bytes: int  # weights + activations + overhead + KV cache


def derive_limits(
    model: str,
    memory: ModelMemory,
    budget_bytes: int,
    *,
    kv_cache_bytes: int | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    planned_seqs: int | None = None,
) -> EngineLimits:
    """Limits for ``model`` within ``budget_bytes``; a knob given is kept as given.
    ``planned_seqs``: size the KV cache to that many sequences (``max_num_seqs`` wins)
    instead of the whole budget.

    Raises ResourceExhaustedError when the budget cannot hold the model with a KV cache
    of at least one block, or cannot hold one sequence of a given ``max_model_len``.
    """
    if memory.kv_bytes_per_token <= 0:
        raise ValueError(f"kv_bytes_per_token must be > 0, got {memory.kv_bytes_per_token}")
    fixed = memory.weights_bytes + memory.activation_bytes + memory.overhead_bytes
    kv = kv_cache_bytes if kv_cache_bytes is not None else budget_bytes - fixed
    if kv_cache_bytes is None and (planned_seqs is not None or max_num_seqs is not None):
        seqs = max_num_seqs if max_num_seqs is not None else planned_seqs
        assert seqs is not None
        kv = min(kv, _kv_bytes_needed(memory, max_model_len, seqs))
    blocks = max(0, kv) // (memory.kv_bytes_per_token * KV_BLOCK_TOKENS)
    kv_tokens = (blocks - 1) * KV_BLOCK_TOKENS
    if kv_tokens < KV_BLOCK_TOKENS:
        raise ResourceExhaustedError(
            f"model {model} needs {fixed} bytes for weights, activations and runtime"
            f" overhead; {budget_bytes} bytes are free on this worker, which leaves no room"
            f" for a KV cache of {2 * KV_BLOCK_TOKENS} tokens"
            f" ({memory.kv_bytes_per_token} bytes each)"
        )
    if max_model_len is None:
        max_model_len = min(memory.context_tokens, kv_tokens)
    elif max_model_len > kv_tokens:
        raise ResourceExhaustedError(
            f"model {model}: max_model_len {max_model_len} needs a KV cache of"
            f" {max_model_len * memory.kv_bytes_per_token} bytes; this worker has room for"
            f" {kv_tokens} tokens ({kv} bytes)"
        )
    if max_num_seqs is None:
        planned = min(max_model_len, PLANNING_SEQ_TOKENS)
        cap = MAX_NUM_SEQS_CAP if planned_seqs is None else planned_seqs
        max_num_seqs = max(1, min(cap, kv_tokens // planned))
    return EngineLimits(
        kv_cache_bytes=kv,
        kv_cache_tokens=kv_tokens,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        footprint_bytes=fixed + kv,
    )


def _kv_bytes_needed(memory: ModelMemory, max_model_len: int | None, seqs: int) -> int:
    """The KV cache for ``seqs`` sequences: one of the whole context (vLLM refuses to
    start without room for it), the others of a typical length; whole blocks, plus the
    one vLLM keeps aside."""
    context = max_model_len if max_model_len is not None else memory.context_tokens
    tokens = context + max(0, seqs - 1) * min(context, PLANNING_SEQ_TOKENS)
    blocks = -(-tokens // KV_BLOCK_TOKENS) + 1
    return blocks * KV_BLOCK_TOKENS * memory.kv_bytes_per_token
