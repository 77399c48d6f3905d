"""A model's shape, read from its config.json, and its exact parameter count.

:func:`parse_architecture` turns a Hugging Face ``config.json`` (as a mapping) into an
:class:`Architecture`: the dimensions the memory formulas need plus an inventory of every
parameter tensor group (embeddings, the linear layers of each block, norms and biases).
The inventory is what makes the count exact: it mirrors, family by family, the modules
transformers builds for the architecture (checked against transformers itself on the meta
device in ``tests/estimator``), and it keeps the linear layers apart so that quantization
(which only touches them), LoRA (which targets them by name) and tensor parallelism (which
splits them) can each be computed from it.

Architectures this module does not know fall back to a generic decoder formula (a
Llama-like block from ``hidden_size``, heads and ``intermediate_size``) and say so:
:attr:`Architecture.confidence` is ``"generic"`` instead of ``"exact"``.

No protobuf here: this is domain code, errors are :class:`runtime.errors.InvalidArgumentError`
naming the offending ``config.<field>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidArgumentError

__all__ = [
    "EXACT",
    "GENERIC",
    "KNOWN_MODEL_TYPES",
    "Architecture",
    "LinearGroup",
    "MlaDims",
    "MoeDims",
    "parse_architecture",
]

EXACT = "exact"
GENERIC = "generic"

# Sanity bounds: a config beyond these is a typo or an attack, not a model.
_MAX_DIM = 1 << 22  # 4M: hidden/intermediate/vocab sizes
_MAX_LAYERS = 4096
_MAX_EXPERTS = 1 << 14


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


# --------------------------------------------------------------------------- config access


class _Config:
    """Typed, validated reads from a config mapping; errors name ``config.<key>``."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _bad(self, key: str, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"config.{key}: {what}, got {self.raw.get(key)!r}")

    def integer(
        self, key: str, default: int | None = None, *, minimum: int = 1, maximum: int = _MAX_DIM
    ) -> int:
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise InvalidArgumentError(f"config.{key}: required for this architecture")
            return default
        # JSON through google.protobuf.Struct turns every number into a float.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise self._bad(key, "must be an integer")
            value = int(value)
        if not minimum <= value <= maximum:
            raise self._bad(key, f"must be in {minimum}..{maximum}")
        return value

    def opt_int(self, key: str, *, minimum: int = 1, maximum: int = _MAX_DIM) -> int | None:
        if self.raw.get(key) is None:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def first_int(self, keys: tuple[str, ...], default: int | None = None, **kw: Any) -> int:
        for key in keys:
            if self.has(key):
                return self.integer(key, **kw)
        if default is None:
            raise InvalidArgumentError(f"config.{keys[0]}: required for this architecture")
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "must be true or false")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self._bad(key, "must be a list of integers")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float) or item != int(item):
                raise self._bad(key, "must be a list of integers")
            out.append(int(item))
        return out

    def str_list(self, key: str) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "must be a list of strings")
        return list(value)


def _divide(c: _Config, num_key: str, num: int, den_key: str, den: int) -> int:
    if num % den:
        raise InvalidArgumentError(
            f"config.{num_key}: {num} is not a multiple of config.{den_key} ({den})"
        )
    return num // den


# --------------------------------------------------------------------------- families


@dataclass
class _Build:
    """What a family function fills in; :func:`parse_architecture` freezes it."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_pos: int | None
    tied: bool
    embedding: int = 0
    lm_head: int = 0
    groups: list[LinearGroup] = field(default_factory=list)
    other: int = 0
    windows: tuple[int | None, ...] = ()
    mla: MlaDims | None = None
    moe: MoeDims | None = None
    notes: list[str] = field(default_factory=list)

    def linear(
        self,
        name: str,
        in_f: int,
        out_f: int,
        *,
        kind: str,
        layers: int | None = None,
        copies: int = 1,
        bias: bool = False,
    ) -> None:
        n = self.layers if layers is None else layers
        if n <= 0:
            return
        self.groups.append(LinearGroup(name, in_f, out_f, n, kind, copies))
        if bias:
            self.other += out_f * n * copies

    def norms(self, size: int, count: int, *, with_bias: bool = False) -> None:
        self.other += size * count * (2 if with_bias else 1)

    def head(self) -> None:
        self.lm_head = 0 if self.tied else self.vocab * self.hidden


def _windows_from_layer_types(
    c: _Config, layers: int, window: int | None
) -> tuple[int | None, ...]:
    types = c.str_list("layer_types")
    if types is None:
        return (None,) * layers
    if len(types) != layers:
        raise InvalidArgumentError(
            f"config.layer_types: has {len(types)} entries, config.num_hidden_layers is {layers}"
        )
    return tuple(window if t == "sliding_attention" and window else None for t in types)


def _llama_like(c: _Config, model_type: str) -> _Build:
    """llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma, gemma2, phi3 and generic."""
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    layers = c.integer("num_hidden_layers", maximum=_MAX_LAYERS)
    kv_heads = c.integer("num_key_value_heads", heads)
    head_dim = c.integer("head_dim", 0, minimum=0) or _divide(
        c, "hidden_size", hidden, "num_attention_heads", heads
    )
    default_tied = model_type in ("gemma", "gemma2")
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=c.integer("intermediate_size", 4 * hidden),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", default_tied),
    )
    if kv_heads > heads or heads % kv_heads:
        raise InvalidArgumentError(
            f"config.num_key_value_heads: {kv_heads} must divide config.num_attention_heads"
            f" ({heads})"
        )
    b.embedding = b.vocab * hidden
    b.head()
    q_out, kv_out = heads * head_dim, kv_heads * head_dim

    # Attention projections and their biases.
    if model_type == "phi3":
        b.linear("qkv_proj", hidden, q_out + 2 * kv_out, kind="attention")
        b.linear("o_proj", q_out, hidden, kind="attention")
    else:
        if model_type in ("mistral", "mixtral"):
            qkv_bias = o_bias = False
        elif model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = c.flag("attention_bias", False)
        b.linear("q_proj", hidden, q_out, kind="attention", bias=qkv_bias)
        b.linear("k_proj", hidden, kv_out, kind="attention", bias=qkv_bias)
        b.linear("v_proj", hidden, kv_out, kind="attention", bias=qkv_bias)
        b.linear("o_proj", q_out, hidden, kind="attention", bias=o_bias)
    if model_type in ("qwen3", "qwen3_moe"):
        b.norms(head_dim, 2 * layers)  # q_norm, k_norm over the head dim

    # Feed-forward: dense, or routed experts on some layers.
    mlp_bias = c.flag("mlp_bias", False) if model_type == "llama" else False
    moe_layers = 0
    if model_type == "mixtral":
        experts = c.integer("num_local_experts", 8, maximum=_MAX_EXPERTS)
        moe_layers = layers
        b.moe = MoeDims(experts, c.integer("num_experts_per_tok", 2), b.intermediate, layers)
        b.linear("router", hidden, experts, kind="router")
        b.linear("gate_up_proj", hidden, 2 * b.intermediate, kind="expert", copies=experts)
        b.linear("down_proj", b.intermediate, hidden, kind="expert", copies=experts)
    elif model_type == "qwen3_moe":
        experts = c.first_int(("num_experts", "num_local_experts"), 128, maximum=_MAX_EXPERTS)
        step = c.integer("decoder_sparse_step", 1)
        dense_only = set(c.int_list("mlp_only_layers"))
        moe_layers = sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)
        moe_inter = c.integer("moe_intermediate_size", b.intermediate)
        b.moe = MoeDims(experts, c.integer("num_experts_per_tok", 8), moe_inter, moe_layers)
        b.linear("router", hidden, experts, kind="router", layers=moe_layers)
        b.linear(
            "gate_up_proj", hidden, 2 * moe_inter, kind="expert", layers=moe_layers, copies=experts
        )
        b.linear("down_proj", moe_inter, hidden, kind="expert", layers=moe_layers, copies=experts)
    dense_layers = layers - moe_layers
    if model_type == "phi3":
        b.linear("gate_up_proj", hidden, 2 * b.intermediate, kind="mlp")
    else:
        b.linear(
            "gate_proj", hidden, b.intermediate, kind="mlp", layers=dense_layers, bias=mlp_bias
        )
        b.linear("up_proj", hidden, b.intermediate, kind="mlp", layers=dense_layers, bias=mlp_bias)
    b.linear("down_proj", b.intermediate, hidden, kind="mlp", layers=dense_layers, bias=mlp_bias)

    b.norms(hidden, (4 if model_type == "gemma2" else 2) * layers + 1)

    # Sliding-window attention (what vLLM caches per layer).
    window = c.opt_int("sliding_window", maximum=1 << 30)
    if model_type == "gemma2":
        if c.str_list("layer_types") is None:  # gemma2: even layers slide
            b.windows = tuple(window if i % 2 == 0 else None for i in range(layers))
        else:
            b.windows = _windows_from_layer_types(c, layers, window)
    elif model_type in ("qwen2", "qwen3", "qwen3_moe"):
        if c.flag("use_sliding_window", False) and window:
            if c.str_list("layer_types") is not None:
                b.windows = _windows_from_layer_types(c, layers, window)
            else:
                first_full = c.integer("max_window_layers", layers, minimum=0, maximum=_MAX_LAYERS)
                b.windows = tuple(window if i >= first_full else None for i in range(layers))
        else:
            b.windows = (None,) * layers
    elif model_type in ("mistral", "mixtral", "phi3") or c.has("layer_types"):
        b.windows = _windows_from_layer_types(c, layers, window)
        if c.str_list("layer_types") is None and window:
            b.windows = (window,) * layers
    else:
        b.windows = (None,) * layers
    return b


def _deepseek(c: _Config, model_type: str) -> _Build:
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    layers = c.integer("num_hidden_layers", maximum=_MAX_LAYERS)
    mla = MlaDims(
        kv_lora_rank=c.integer("kv_lora_rank", 512),
        qk_rope_head_dim=c.integer("qk_rope_head_dim", 64),
        qk_nope_head_dim=c.integer("qk_nope_head_dim", 128),
        v_head_dim=c.integer("v_head_dim", 128),
        q_lora_rank=c.opt_int("q_lora_rank"),
    )
    qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=1,  # the latent is shared by every head
        head_dim=mla.kv_lora_rank + mla.qk_rope_head_dim,
        intermediate=c.integer("intermediate_size"),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", False),
        mla=mla,
    )
    b.embedding = b.vocab * hidden
    b.head()
    attn_bias = c.flag("attention_bias", False)
    if mla.q_lora_rank is None:
        b.linear("q_proj", hidden, heads * qk_head, kind="attention")
    else:
        b.linear("q_a_proj", hidden, mla.q_lora_rank, kind="attention", bias=attn_bias)
        b.norms(mla.q_lora_rank, layers)
        b.linear("q_b_proj", mla.q_lora_rank, heads * qk_head, kind="attention")
    b.linear(
        "kv_a_proj_with_mqa",
        hidden,
        mla.kv_lora_rank + mla.qk_rope_head_dim,
        kind="attention",
        bias=attn_bias,
    )
    b.norms(mla.kv_lora_rank, layers)
    b.linear(
        "kv_b_proj",
        mla.kv_lora_rank,
        heads * (mla.qk_nope_head_dim + mla.v_head_dim),
        kind="attention",
    )
    b.linear("o_proj", heads * mla.v_head_dim, hidden, kind="attention", bias=attn_bias)

    experts = c.first_int(("n_routed_experts", "num_local_experts"), maximum=_MAX_EXPERTS)
    first_dense = c.integer("first_k_dense_replace", 0, minimum=0, maximum=_MAX_LAYERS)
    dense_layers = min(first_dense, layers)
    moe_layers = layers - dense_layers
    moe_inter = c.integer("moe_intermediate_size")
    shared = c.integer("n_shared_experts", 0, minimum=0, maximum=_MAX_EXPERTS)
    mlp_bias = c.flag("mlp_bias", False) if model_type == "deepseek_v2" else False
    b.moe = MoeDims(
        experts, c.integer("num_experts_per_tok"), moe_inter, moe_layers, moe_inter * shared
    )
    b.linear("gate_proj", hidden, b.intermediate, kind="mlp", layers=dense_layers, bias=mlp_bias)
    b.linear("up_proj", hidden, b.intermediate, kind="mlp", layers=dense_layers, bias=mlp_bias)
    b.linear("down_proj", b.intermediate, hidden, kind="mlp", layers=dense_layers, bias=mlp_bias)
    b.linear("router", hidden, experts, kind="router", layers=moe_layers)
    b.linear(
        "gate_up_proj", hidden, 2 * moe_inter, kind="expert", layers=moe_layers, copies=experts
    )
    b.linear("down_proj", moe_inter, hidden, kind="expert", layers=moe_layers, copies=experts)
    if shared:
        si = moe_inter * shared
        for name in ("shared_gate_proj", "shared_up_proj"):
            b.linear(name, hidden, si, kind="shared_expert", layers=moe_layers, bias=mlp_bias)
        b.linear(
            "shared_down_proj", si, hidden, kind="shared_expert", layers=moe_layers, bias=mlp_bias
        )
    b.norms(hidden, 2 * layers + 1)
    b.windows = (None,) * layers
    if model_type == "deepseek_v3":
        b.notes.append(
            "deepseek_v3: the multi-token-prediction layer and the router's"
            " e_score_correction_bias (a buffer in transformers) are not counted"
        )
    return b


def _gpt2(c: _Config, model_type: str) -> _Build:
    hidden = c.first_int(("n_embd", "hidden_size"))
    heads = c.first_int(("n_head", "num_attention_heads"))
    layers = c.first_int(("n_layer", "num_hidden_layers"), maximum=_MAX_LAYERS)
    inner = c.integer("n_inner", 4 * hidden)
    positions = c.first_int(("n_positions", "max_position_embeddings"), 1024)
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=_divide(c, "n_embd", hidden, "n_head", heads),
        intermediate=inner,
        max_pos=positions,
        tied=c.flag("tie_word_embeddings", True),
    )
    b.embedding = b.vocab * hidden + positions * hidden
    b.head()
    b.linear("c_attn", hidden, 3 * hidden, kind="attention", bias=True)
    b.linear("c_proj", hidden, hidden, kind="attention", bias=True)
    b.linear("c_fc", hidden, inner, kind="mlp", bias=True)
    b.linear("mlp.c_proj", inner, hidden, kind="mlp", bias=True)
    b.norms(hidden, 2 * layers + 1, with_bias=True)
    b.windows = (None,) * layers
    return b


def _gpt_neox(c: _Config, model_type: str) -> _Build:
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    layers = c.integer("num_hidden_layers", maximum=_MAX_LAYERS)
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=_divide(c, "hidden_size", hidden, "num_attention_heads", heads),
        intermediate=c.integer("intermediate_size", 4 * hidden),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", False),
    )
    b.embedding = b.vocab * hidden
    b.head()
    bias = c.flag("attention_bias", True)
    b.linear("query_key_value", hidden, 3 * hidden, kind="attention", bias=bias)
    b.linear("dense", hidden, hidden, kind="attention", bias=bias)
    b.linear("dense_h_to_4h", hidden, b.intermediate, kind="mlp", bias=True)
    b.linear("dense_4h_to_h", b.intermediate, hidden, kind="mlp", bias=True)
    b.norms(hidden, 2 * layers + 1, with_bias=True)
    b.windows = (None,) * layers
    return b


def _opt(c: _Config, model_type: str) -> _Build:
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    layers = c.integer("num_hidden_layers", maximum=_MAX_LAYERS)
    ffn = c.integer("ffn_dim", 4 * hidden)
    positions = c.integer("max_position_embeddings", 2048)
    proj = c.integer("word_embed_proj_dim", hidden)
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=_divide(c, "hidden_size", hidden, "num_attention_heads", heads),
        intermediate=ffn,
        max_pos=positions,
        tied=c.flag("tie_word_embeddings", True),
    )
    # OPT offsets learned positions by 2 (padding), and projects when proj != hidden.
    b.embedding = b.vocab * proj + (positions + 2) * hidden
    if proj != hidden:
        b.embedding += 2 * proj * hidden  # project_in, project_out (no bias)
    b.lm_head = 0 if b.tied else b.vocab * proj
    bias = c.flag("enable_bias", True)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        b.linear(name, hidden, hidden, kind="attention", bias=bias)
    b.linear("fc1", hidden, ffn, kind="mlp", bias=bias)
    b.linear("fc2", ffn, hidden, kind="mlp", bias=bias)
    affine = c.flag("layer_norm_elementwise_affine", True)
    if affine:
        b.norms(hidden, 2 * layers, with_bias=True)
    if c.flag("do_layer_norm_before", True) and not c.flag("_remove_final_layer_norm", False):
        b.norms(hidden, 1, with_bias=True)
    b.windows = (None,) * layers
    return b


def _falcon(c: _Config, model_type: str) -> _Build:
    hidden = c.integer("hidden_size")
    heads = c.first_int(("num_attention_heads", "n_head"))
    layers = c.first_int(("num_hidden_layers", "n_layer"), maximum=_MAX_LAYERS)
    head_dim = _divide(c, "hidden_size", hidden, "num_attention_heads", heads)
    new_arch = c.flag("new_decoder_architecture", False)
    multi_query = c.flag("multi_query", True)
    if new_arch:
        kv_heads = c.first_int(("num_kv_heads", "n_head_kv"), heads)
    elif multi_query:
        kv_heads = 1
    else:
        kv_heads = heads
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=c.integer("ffn_hidden_size", 4 * hidden),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", True),
    )
    b.embedding = b.vocab * hidden
    b.head()
    bias = c.flag("bias", False)
    b.linear(
        "query_key_value", hidden, (heads + 2 * kv_heads) * head_dim, kind="attention", bias=bias
    )
    b.linear("dense", hidden, hidden, kind="attention", bias=bias)
    b.linear("dense_h_to_4h", hidden, b.intermediate, kind="mlp", bias=bias)
    b.linear("dense_4h_to_h", b.intermediate, hidden, kind="mlp", bias=bias)
    parallel = c.flag("parallel_attn", True)
    ln_parallel = c.opt_int("num_ln_in_parallel_attn", maximum=2)
    if ln_parallel is None and new_arch:
        ln_parallel = 2
    per_layer = 2 if not parallel or ln_parallel == 2 else 1
    b.norms(hidden, per_layer * layers + 1, with_bias=True)
    b.windows = (None,) * layers
    return b


def _bloom(c: _Config, model_type: str) -> _Build:
    hidden = c.first_int(("hidden_size", "n_embed"))
    heads = c.first_int(("n_head", "num_attention_heads"))
    layers = c.first_int(("n_layer", "num_hidden_layers"), maximum=_MAX_LAYERS)
    b = _Build(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=_divide(c, "hidden_size", hidden, "n_head", heads),
        intermediate=4 * hidden,
        max_pos=None,  # ALiBi: no learned positions, no hard limit
        tied=c.flag("tie_word_embeddings", True),
    )
    b.embedding = b.vocab * hidden
    b.head()
    b.linear("query_key_value", hidden, 3 * hidden, kind="attention", bias=True)
    b.linear("dense", hidden, hidden, kind="attention", bias=True)
    b.linear("dense_h_to_4h", hidden, 4 * hidden, kind="mlp", bias=True)
    b.linear("dense_4h_to_h", 4 * hidden, hidden, kind="mlp", bias=True)
    # word_embeddings_layernorm + 2 per layer + ln_f
    b.norms(hidden, 2 * layers + 2, with_bias=True)
    b.windows = (None,) * layers
    return b


_FAMILIES: dict[str, tuple[str, Callable[[_Config, str], _Build]]] = {
    "llama": ("llama", _llama_like),
    "mistral": ("llama", _llama_like),
    "mixtral": ("llama", _llama_like),
    "qwen2": ("llama", _llama_like),
    "qwen3": ("llama", _llama_like),
    "qwen3_moe": ("llama", _llama_like),
    "gemma": ("llama", _llama_like),
    "gemma2": ("llama", _llama_like),
    "phi3": ("llama", _llama_like),
    "deepseek_v2": ("deepseek", _deepseek),
    "deepseek_v3": ("deepseek", _deepseek),
    "gpt2": ("gpt2", _gpt2),
    "gpt_neox": ("gpt_neox", _gpt_neox),
    "opt": ("opt", _opt),
    "falcon": ("falcon", _falcon),
    "bloom": ("bloom", _bloom),
}

KNOWN_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILIES))

# architectures[0] -> model_type, for configs without (or with an odd) model_type.
_ARCHITECTURE_NAMES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "OPTForCausalLM": "opt",
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",
    "BloomForCausalLM": "bloom",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}


_CHECKPOINT_DTYPES: dict[str, str] = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
}


def parse_architecture(config: Mapping[str, Any]) -> Architecture:
    """The :class:`Architecture` of a config.json mapping.

    Raises :class:`InvalidArgumentError` naming the field when the config is malformed.
    """
    if not isinstance(config, Mapping):
        raise InvalidArgumentError("config: must be a JSON object (a model's config.json)")
    if not config:
        raise InvalidArgumentError("config: is empty; give a model's config.json")
    # Multimodal wrappers keep the language model under text_config.
    text = config.get("text_config")
    if isinstance(text, Mapping) and config.get("hidden_size") is None:
        config = {**text, "model_type": text.get("model_type", config.get("model_type"))}
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise InvalidArgumentError(f"config.model_type: must be a string, got {model_type!r}")
    archs = config.get("architectures")
    if archs is not None and (
        not isinstance(archs, list | tuple) or not all(isinstance(a, str) for a in archs)
    ):
        raise InvalidArgumentError("config.architectures: must be a list of strings")
    key = (model_type or "").lower()
    if key not in _FAMILIES and archs:
        key = _ARCHITECTURE_NAMES.get(archs[0], key)
    c = _Config(config)
    notes: list[str] = []
    if key in _FAMILIES:
        family, build = _FAMILIES[key]
        confidence = EXACT
    else:
        family, build, confidence = "generic", _llama_like, GENERIC
        notes.append(
            f"model_type {model_type!r} is not a known architecture; parameters and KV cache"
            " use a generic Llama-like decoder formula (hidden_size, num_attention_heads,"
            " num_key_value_heads, intermediate_size, num_hidden_layers, vocab_size)"
        )
    b = build(c, key)
    stored = config.get("torch_dtype") or config.get("dtype")
    checkpoint_dtype = _CHECKPOINT_DTYPES.get(stored) if isinstance(stored, str) else None
    return Architecture(
        model_type=key or "unknown",
        family=family,
        confidence=confidence,
        vocab_size=b.vocab,
        hidden_size=b.hidden,
        num_layers=b.layers,
        num_heads=b.heads,
        num_kv_heads=b.kv_heads,
        head_dim=b.head_dim,
        intermediate_size=b.intermediate,
        max_position_embeddings=b.max_pos,
        tie_word_embeddings=b.tied,
        embedding_params=b.embedding,
        lm_head_params=b.lm_head,
        linear_groups=tuple(b.groups),
        other_params=b.other,
        layer_windows=b.windows,
        mla=b.mla,
        moe=b.moe,
        notes=(*notes, *b.notes),
        checkpoint_dtype=checkpoint_dtype,
    )


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers."""
    return -(-a // b)
