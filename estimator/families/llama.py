"""The Llama-like decoder family (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma,
gemma2, phi3) and the generic fallback for unknown architectures: attention projections,
dense or mixture-of-experts feed-forward, RMS norms and per-layer sliding windows."""

from __future__ import annotations

from estimator.architecture import MoeDims
from estimator.families.build import FamilyBuild, decoder_build, standard_dims
from estimator.families.config_reader import (
    MAX_EXPERTS,
    MAX_LAYERS,
    ConfigReader,
    divide_exactly,
)
from runtime.errors import InvalidArgumentError


def llama_like(c: ConfigReader, model_type: str) -> FamilyBuild:
    """llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma, gemma2, phi3 and generic."""
    hidden, heads, layers = standard_dims(c)
    kv_heads = c.integer("num_key_value_heads", heads)
    head_dim = c.integer("head_dim", 0, minimum=0) or divide_exactly(
        c, "hidden_size", hidden, "num_attention_heads", heads
    )
    default_tied = model_type in ("gemma", "gemma2")
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
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
    _attention(b, c, model_type)
    _feed_forward(b, c, model_type)
    b.norms(hidden, (4 if model_type == "gemma2" else 2) * layers + 1)
    b.windows = _sliding_windows(c, model_type, layers)
    return b


def _attention(b: FamilyBuild, c: ConfigReader, model_type: str) -> None:
    """Attention projections and their biases (plus qwen3's per-head q/k norms)."""
    hidden, head_dim = b.hidden, b.head_dim
    q_out, kv_out = b.heads * head_dim, b.kv_heads * head_dim
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
        b.norms(head_dim, 2 * b.layers)  # q_norm, k_norm over the head dim


def _feed_forward(b: FamilyBuild, c: ConfigReader, model_type: str) -> None:
    """Feed-forward: dense, or routed experts on some layers (mixtral, qwen3_moe)."""
    hidden, layers = b.hidden, b.layers
    mlp_bias = c.flag("mlp_bias", False) if model_type == "llama" else False
    moe_layers = 0
    if model_type == "mixtral":
        experts = c.integer("num_local_experts", 8, maximum=MAX_EXPERTS)
        moe_layers = layers
        b.moe = MoeDims(experts, c.integer("num_experts_per_tok", 2), b.intermediate, layers)
        b.linear("router", hidden, experts, kind="router")
        b.linear("gate_up_proj", hidden, 2 * b.intermediate, kind="expert", copies=experts)
        b.linear("down_proj", b.intermediate, hidden, kind="expert", copies=experts)
    elif model_type == "qwen3_moe":
        experts = c.first_int(("num_experts", "num_local_experts"), 128, maximum=MAX_EXPERTS)
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


def _sliding_windows(c: ConfigReader, model_type: str, layers: int) -> tuple[int | None, ...]:
    """Sliding-window attention per layer (what vLLM caches per layer)."""
    window = c.opt_int("sliding_window", maximum=1 << 30)
    if model_type == "gemma2":
        if c.str_list("layer_types") is None:  # gemma2: even layers slide
            return tuple(window if i % 2 == 0 else None for i in range(layers))
        return _windows_from_layer_types(c, layers, window)
    if model_type in ("qwen2", "qwen3", "qwen3_moe"):
        if c.flag("use_sliding_window", False) and window:
            if c.str_list("layer_types") is not None:
                return _windows_from_layer_types(c, layers, window)
            first_full = c.integer("max_window_layers", layers, minimum=0, maximum=MAX_LAYERS)
            return tuple(window if i >= first_full else None for i in range(layers))
        return (None,) * layers
    if model_type in ("mistral", "mixtral", "phi3") or c.has("layer_types"):
        windows = _windows_from_layer_types(c, layers, window)
        if c.str_list("layer_types") is None and window:
            windows = (window,) * layers
        return windows
    return (None,) * layers


def _windows_from_layer_types(
    c: ConfigReader, layers: int, window: int | None
) -> tuple[int | None, ...]:
    types = c.str_list("layer_types")
    if types is None:
        return (None,) * layers
    if len(types) != layers:
        raise InvalidArgumentError(
            f"config.layer_types: has {len(types)} entries, config.num_hidden_layers is {layers}"
        )
    return tuple(window if t == "sliding_attention" and window else None for t in types)
