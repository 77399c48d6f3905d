"""Pre-Llama decoder families (gpt2, gpt_neox, opt, falcon, bloom): multi-head or
multi-query attention with a fused or separate QKV, GELU MLPs and LayerNorms with biases."""

from __future__ import annotations

from estimator.families.build import FamilyBuild, decoder_build, standard_dims
from estimator.families.config_reader import MAX_LAYERS, ConfigReader, divide_exactly


def _fused_qkv_block(b: FamilyBuild, qkv_out: int, *, attn_bias: bool, mlp_bias: bool) -> None:
    """The per-layer linears named as gpt_neox, falcon and bloom name them: a fused QKV
    projection, its output projection, and the MLP's up and down projections."""
    b.linear("query_key_value", b.hidden, qkv_out, kind="attention", bias=attn_bias)
    b.linear("dense", b.hidden, b.hidden, kind="attention", bias=attn_bias)
    b.linear("dense_h_to_4h", b.hidden, b.intermediate, kind="mlp", bias=mlp_bias)
    b.linear("dense_4h_to_h", b.intermediate, b.hidden, kind="mlp", bias=mlp_bias)


def gpt2(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden = c.first_int(("n_embd", "hidden_size"))
    heads = c.first_int(("n_head", "num_attention_heads"))
    layers = c.first_int(("n_layer", "num_hidden_layers"), maximum=MAX_LAYERS)
    inner = c.integer("n_inner", 4 * hidden)
    positions = c.first_int(("n_positions", "max_position_embeddings"), 1024)
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
        intermediate=inner,
        max_pos=positions,
        tied=c.flag("tie_word_embeddings", True),
        names=("n_embd", "n_head"),
    )
    b.embedding += positions * hidden  # learned positions
    b.linear("c_attn", hidden, 3 * hidden, kind="attention", bias=True)
    b.linear("c_proj", hidden, hidden, kind="attention", bias=True)
    b.linear("c_fc", hidden, inner, kind="mlp", bias=True)
    b.linear("mlp.c_proj", inner, hidden, kind="mlp", bias=True)
    b.norms(hidden, 2 * layers + 1, with_bias=True)
    return b


def gpt_neox(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden, heads, layers = standard_dims(c)
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
        intermediate=c.integer("intermediate_size", 4 * hidden),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", False),
    )
    bias = c.flag("attention_bias", True)
    _fused_qkv_block(b, 3 * hidden, attn_bias=bias, mlp_bias=True)
    b.norms(hidden, 2 * layers + 1, with_bias=True)
    return b


def opt(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden, heads, layers = standard_dims(c)
    ffn = c.integer("ffn_dim", 4 * hidden)
    positions = c.integer("max_position_embeddings", 2048)
    proj = c.integer("word_embed_proj_dim", hidden)
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
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
    return b


def falcon(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden = c.integer("hidden_size")
    heads = c.first_int(("num_attention_heads", "n_head"))
    layers = c.first_int(("num_hidden_layers", "n_layer"), maximum=MAX_LAYERS)
    head_dim = divide_exactly(c, "hidden_size", hidden, "num_attention_heads", heads)
    new_arch = c.flag("new_decoder_architecture", False)
    multi_query = c.flag("multi_query", True)
    if new_arch:
        kv_heads = c.first_int(("num_kv_heads", "n_head_kv"), heads)
    elif multi_query:
        kv_heads = 1
    else:
        kv_heads = heads
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=c.integer("ffn_hidden_size", 4 * hidden),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", True),
    )
    bias = c.flag("bias", False)
    _fused_qkv_block(b, (heads + 2 * kv_heads) * head_dim, attn_bias=bias, mlp_bias=bias)
    parallel = c.flag("parallel_attn", True)
    ln_parallel = c.opt_int("num_ln_in_parallel_attn", maximum=2)
    if ln_parallel is None and new_arch:
        ln_parallel = 2
    per_layer = 2 if not parallel or ln_parallel == 2 else 1
    b.norms(hidden, per_layer * layers + 1, with_bias=True)
    return b


def bloom(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden = c.first_int(("hidden_size", "n_embed"))
    heads = c.first_int(("n_head", "num_attention_heads"))
    layers = c.first_int(("n_layer", "num_hidden_layers"), maximum=MAX_LAYERS)
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
        intermediate=4 * hidden,
        max_pos=None,  # ALiBi: no learned positions, no hard limit
        tied=c.flag("tie_word_embeddings", True),
        names=("hidden_size", "n_head"),
    )
    _fused_qkv_block(b, 3 * hidden, attn_bias=True, mlp_bias=True)
    # word_embeddings_layernorm + 2 per layer + ln_f
    b.norms(hidden, 2 * layers + 2, with_bias=True)
    return b
