"""A model's shape: the :class:`Architecture` the memory formulas read, and its exact
parameter count.

An :class:`Architecture` holds the dimensions the memory formulas need plus an inventory of
every parameter tensor group (embeddings, the linear layers of each block, norms and biases).
The inventory is what makes the count exact: it mirrors, family by family, the modules
transformers builds for the architecture (checked against transformers itself on the meta
device in ``tests/estimator``), and it keeps the linear layers apart so that quantization
(which only touches them), LoRA (which targets them by name) and tensor parallelism (which
splits them) can each be computed from it.

:func:`estimator.config_json.parse_architecture` builds one from a ``config.json``; the
per-family inventories live in :mod:`estimator.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "EXACT",
    "GENERIC",
    "Architecture",
    "LinearGroup",
    "MlaDims",
    "MoeDims",
    "ceil_div",
]

EXACT = "exact"
GENERIC = "generic"


@dataclass(frozen=True)
class LinearGroup:
    """``layers x copies`` identical linear weights of shape ``out_features x in_features``.

    ``kind`` says how the group behaves: ``attention`` / ``mlp`` / ``shared_expert`` are
    split by tensor parallelism, ``expert`` by expert parallelism (or TP when EP is 1),
    ``router`` is replicated and never quantized. Biases are not here (see
    :attr:`Architecture.other_params`).
    """

    name: str
    in_features: int
    out_features: int
    layers: int
    kind: str
    copies: int = 1

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.layers * self.copies

    @property
    def matrices(self) -> int:
        return self.layers * self.copies


@dataclass(frozen=True)
class MlaDims:
    """DeepSeek multi-head latent attention: what the KV cache holds per token per layer."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None


@dataclass(frozen=True)
class MoeDims:
    """Mixture of experts: routed experts per MoE layer and how many are active."""

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    moe_layers: int
    shared_intermediate_size: int = 0


@dataclass(frozen=True)
class Architecture:
    """Everything the memory formulas need to know about a model."""

    model_type: str
    family: str
    confidence: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    embedding_params: int  # token (+ position, + projection) embeddings
    lm_head_params: int  # 0 when tied to the input embedding
    linear_groups: tuple[LinearGroup, ...]
    other_params: int  # norms, biases: small, never quantized, replicated under TP
    # Per layer: None for full attention, else the sliding window length in tokens.
    layer_windows: tuple[int | None, ...]
    mla: MlaDims | None = None
    moe: MoeDims | None = None
    notes: tuple[str, ...] = field(default=())
    # The checkpoint's precision (config torch_dtype / dtype): fp32, fp16, bf16 or None.
    checkpoint_dtype: str | None = None

    @property
    def linear_params(self) -> int:
        return sum(g.params for g in self.linear_groups)

    @property
    def parameter_count(self) -> int:
        """Unique parameters: tied embeddings counted once."""
        return self.embedding_params + self.lm_head_params + self.linear_params + self.other_params

    @property
    def active_parameter_count(self) -> int:
        """Parameters one token goes through (MoE: only the routed top-k experts)."""
        total = self.parameter_count
        if self.moe is None:
            return total
        for g in self.linear_groups:
            if g.kind == "expert":
                total -= g.params - g.in_features * g.out_features * g.layers * min(
                    self.moe.experts_per_token, g.copies
                )
        return total


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers."""
    return -(-a // b)
