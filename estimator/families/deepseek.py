"""The DeepSeek family (deepseek_v2, deepseek_v3): multi-head latent attention (MLA) and
mixture-of-experts layers after the first ``first_k_dense_replace`` dense ones."""

from __future__ import annotations

from estimator.architecture import MlaDims, MoeDims
from estimator.families.build import FamilyBuild, decoder_build, standard_dims
from estimator.families.config_reader import MAX_EXPERTS, MAX_LAYERS, ConfigReader


def deepseek(c: ConfigReader, model_type: str) -> FamilyBuild:
    hidden, heads, layers = standard_dims(c)
    mla = MlaDims(
        kv_lora_rank=c.integer("kv_lora_rank", 512),
        qk_rope_head_dim=c.integer("qk_rope_head_dim", 64),
        qk_nope_head_dim=c.integer("qk_nope_head_dim", 128),
        v_head_dim=c.integer("v_head_dim", 128),
        q_lora_rank=c.opt_int("q_lora_rank"),
    )
    b = decoder_build(
        c,
        hidden,
        heads,
        layers,
        kv_heads=1,  # the latent is shared by every head
        head_dim=mla.kv_lora_rank + mla.qk_rope_head_dim,
        intermediate=c.integer("intermediate_size"),
        max_pos=c.opt_int("max_position_embeddings"),
        tied=c.flag("tie_word_embeddings", False),
        mla=mla,
    )
    _latent_attention(b, c, mla)
    _experts(b, c, model_type)
    b.norms(hidden, 2 * layers + 1)
    if model_type == "deepseek_v3":
        b.notes.append(
            "deepseek_v3: the multi-token-prediction layer and the router's"
            " e_score_correction_bias (a buffer in transformers) are not counted"
        )
    return b


def _latent_attention(b: FamilyBuild, c: ConfigReader, mla: MlaDims) -> None:
    """MLA projections: queries (optionally through a low-rank latent), the shared KV latent."""
    hidden, heads, layers = b.hidden, b.heads, b.layers
    qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
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


def _experts(b: FamilyBuild, c: ConfigReader, model_type: str) -> None:
    """Dense MLPs on the first layers, then routed (and optionally shared) experts."""
    hidden, layers = b.hidden, b.layers
    experts = c.first_int(("n_routed_experts", "num_local_experts"), maximum=MAX_EXPERTS)
    first_dense = c.integer("first_k_dense_replace", 0, minimum=0, maximum=MAX_LAYERS)
    dense_layers = min(first_dense, layers)
    moe_layers = layers - dense_layers
    moe_inter = c.integer("moe_intermediate_size")
    shared = c.integer("n_shared_experts", 0, minimum=0, maximum=MAX_EXPERTS)
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
