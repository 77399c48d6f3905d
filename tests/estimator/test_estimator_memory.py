"""The memory formulas beyond the parameter count: precision, KV, layouts, training,
recommendations, caching and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from estimator.cache import TtlCache
from estimator.config_json import parse_architecture
from estimator.estimate_params import EstimateParams
from estimator.gpus import CATALOG, CUDA_CONTEXT_BYTES, find_gpu
from estimator.kvcache import BLOCK_SIZE, kv_cache_bytes, kv_capacity
from estimator.memory import estimate_memory, lora_parameter_count
from estimator.models import inline_config
from estimator.planning import optimize, recommend
from estimator.precision import weight_bytes
from estimator.service import MemoryEstimator
from runtime.errors import InvalidArgumentError

CONFIGS = Path(__file__).parent / "configs"
GiB = 1 << 30


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config


LLAMA = parse_architecture(load("llama-3-8b"))


# --------------------------------------------------------------------------- precision


def test_int4_group_quantization_overhead() -> None:
    w = weight_bytes(LLAMA, "int4", group_size=128)
    linear = LLAMA.linear_params
    # Every matrix's in_features is a multiple of 128: groups = linear / 128 exactly;
    # each group: fp16 scale (2 bytes) + 4-bit zero (0.5 byte).
    expected_linear = linear // 2 + (linear // 128) * 5 // 2
    assert w.linear == expected_linear
    # Embeddings and the LM head stay 16-bit.
    assert w.embedding == LLAMA.embedding_params * 2
    assert w.lm_head == LLAMA.lm_head_params * 2
    # Smaller groups cost more.
    assert weight_bytes(LLAMA, "int4", group_size=32).total > w.total
    assert weight_bytes(LLAMA, "int4", group_size=-1).total < w.total


def test_fp8_and_int8_are_about_half_of_bf16() -> None:
    bf16 = weight_bytes(LLAMA, "bf16").total
    for dtype in ("fp8", "int8"):
        ratio = weight_bytes(LLAMA, dtype).total / bf16
        assert 0.55 < ratio < 0.62  # linear halves; 1B embedding params stay 16-bit


def test_kv_dtype_is_separate_from_weights() -> None:
    a = estimate_memory(LLAMA, EstimateParams(dtype="int4", max_seq_len=4096))
    b = estimate_memory(LLAMA, EstimateParams(dtype="int4", kv_cache_dtype="fp8", max_seq_len=4096))
    assert a.params.kv_cache_dtype == "bf16"
    assert a.model.kv_cache == 2 * b.model.kv_cache
    assert a.model.weights == b.model.weights


# --------------------------------------------------------------------------- KV cache


def test_kv_for_batch_and_length() -> None:
    est = estimate_memory(LLAMA, EstimateParams(batch_size=8, max_seq_len=4096))
    assert est.kv_cache_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert est.model.kv_cache == 8 * 4096 * est.kv_cache_bytes_per_token


def test_sliding_window_layers_hold_their_window() -> None:
    gemma2 = parse_architecture(load("gemma-2-9b"))
    per_layer = 2 * 8 * 256 * 2
    full = 8192
    # 21 global layers hold 8192 tokens, 21 sliding ones 4096.
    assert kv_cache_bytes(gemma2, 16, 1, full) == per_layer * (21 * 8192 + 21 * 4096)
    mistral = parse_architecture(load("mistral-7b-v0.1"))
    assert kv_cache_bytes(mistral, 16, 1, 32768) == kv_cache_bytes(mistral, 16, 1, 4096)
    # Qwen2 declares a window but does not use it.
    qwen2 = parse_architecture(load("qwen2-7b"))
    assert all(w is None for w in qwen2.layer_windows)


def test_mla_kv_is_the_latent() -> None:
    v3 = parse_architecture(load("deepseek-v3"))
    est = estimate_memory(v3, EstimateParams(max_seq_len=1000))
    assert est.model.kv_cache == 1000 * 61 * (512 + 64) * 2
    # Replicated under TP: every GPU holds the whole latent.
    tp8 = estimate_memory(v3, EstimateParams(max_seq_len=1000, tensor_parallel_size=8))
    assert tp8.per_gpu.kv_cache == est.model.kv_cache


def test_reverse_capacity_in_blocks() -> None:
    per_token = 2 * 32 * 8 * 128 * 2
    cap = kv_capacity(LLAMA, 16, 10 * GiB, 4096)
    assert cap.blocks == 10 * GiB // (BLOCK_SIZE * per_token)
    assert cap.tokens == cap.blocks * BLOCK_SIZE
    assert cap.max_concurrent_sequences == cap.tokens // 4096
    assert kv_capacity(LLAMA, 16, -5, 4096).tokens == 0


def test_fit_on_a_gpu_uses_memory_utilization() -> None:
    est = estimate_memory(
        LLAMA, EstimateParams(max_seq_len=8192, gpu="H100-80GB", gpu_memory_utilization=0.9)
    )
    assert est.fit is not None
    h100 = find_gpu("H100-80GB")
    assert est.fit.usable_bytes == int(h100.memory_bytes * 0.9)
    assert est.fit.fits
    non_kv = est.per_gpu.total - est.per_gpu.kv_cache
    assert est.fit.kv.available_bytes == est.fit.usable_bytes - non_kv
    assert est.fit.kv.max_concurrent_sequences >= 1
    assert est.per_gpu.overhead >= CUDA_CONTEXT_BYTES["hopper"]


# --------------------------------------------------------------------------- parallelism


def test_tensor_parallel_splits_weights_and_kv() -> None:
    one = estimate_memory(LLAMA, EstimateParams(max_seq_len=4096))
    tp4 = estimate_memory(LLAMA, EstimateParams(max_seq_len=4096, tensor_parallel_size=4))
    assert tp4.gpu_count == 4
    assert tp4.per_gpu.kv_cache == one.model.kv_cache // 4
    # Norms stay replicated: a little more than a quarter.
    assert one.model.weights / 4 < tp4.per_gpu.weights < one.model.weights / 4 * 1.001
    assert tp4.model == one.model  # the whole-model figure does not depend on the layout


def test_kv_heads_replicate_beyond_their_count() -> None:
    falcon40 = parse_architecture(load("falcon-40b"))  # 8 KV heads, 128 query heads
    p = EstimateParams(max_seq_len=2048)
    one = estimate_memory(falcon40, p)
    tp8 = estimate_memory(falcon40, EstimateParams(max_seq_len=2048, tensor_parallel_size=8))
    tp16 = estimate_memory(falcon40, EstimateParams(max_seq_len=2048, tensor_parallel_size=16))
    assert tp8.per_gpu.kv_cache == one.model.kv_cache // 8
    assert tp16.per_gpu.kv_cache == tp8.per_gpu.kv_cache  # one head each, replicated
    falcon7 = parse_architecture(load("falcon-7b"))  # multi-query: one KV head, 71 heads
    assert estimate_memory(falcon7, p).kv_cache_bytes_per_token == 2 * 32 * 1 * 64 * 2
    with pytest.raises(InvalidArgumentError, match="tensor_parallel_size"):
        estimate_memory(falcon7, EstimateParams(max_seq_len=2048, tensor_parallel_size=2))


def test_pipeline_and_expert_parallel() -> None:
    mixtral = parse_architecture(load("mixtral-8x7b"))
    one = estimate_memory(mixtral, EstimateParams(max_seq_len=4096))
    pp2 = estimate_memory(mixtral, EstimateParams(max_seq_len=4096, pipeline_parallel_size=2))
    assert pp2.per_gpu.weights < 0.52 * one.model.weights
    ep8 = estimate_memory(
        mixtral, EstimateParams(max_seq_len=4096, tensor_parallel_size=2, expert_parallel_size=8)
    )
    tp2 = estimate_memory(mixtral, EstimateParams(max_seq_len=4096, tensor_parallel_size=2))
    assert ep8.per_gpu.weights < tp2.per_gpu.weights
    with pytest.raises(InvalidArgumentError, match="expert_parallel_size"):
        estimate_memory(LLAMA, EstimateParams(expert_parallel_size=2))


# --------------------------------------------------------------------------- training


def test_full_fine_tune_adamw_is_16_bytes_per_parameter() -> None:
    est = estimate_memory(LLAMA, EstimateParams(mode="training", max_seq_len=512))
    n = LLAMA.parameter_count
    assert est.model.weights == 2 * n
    assert est.model.gradients == 2 * n
    assert est.model.optimizer == 12 * n  # fp32 master + 2 fp32 moments
    assert est.model.kv_cache == 0
    eight = estimate_memory(
        LLAMA, EstimateParams(mode="training", max_seq_len=512, optimizer="adamw_8bit")
    )
    assert 6 * n <= eight.model.optimizer < 6.01 * n


def test_activation_checkpointing_saves_memory() -> None:
    base = EstimateParams(mode="training", max_seq_len=2048, batch_size=4)
    off = estimate_memory(LLAMA, base)
    on = estimate_memory(
        LLAMA, EstimateParams(**{**base.__dict__, "activation_checkpointing": True})
    )
    assert on.model.activations < off.model.activations / 3


def test_zero_stages_partition_state() -> None:
    n = LLAMA.parameter_count
    totals = []
    for stage in range(4):
        est = estimate_memory(
            LLAMA, EstimateParams(mode="training", max_seq_len=512, zero_stage=stage, num_gpus=8)
        )
        totals.append(est.per_gpu)
    assert totals[0].optimizer == 12 * n
    assert totals[1].optimizer == -(-12 * n // 8)
    assert totals[2].gradients == -(-2 * n // 8)
    assert totals[3].weights == -(-2 * n // 8)
    assert totals[0].total > totals[1].total > totals[2].total > totals[3].total


def test_lora_and_qlora() -> None:
    lora = estimate_memory(LLAMA, EstimateParams(mode="lora", max_seq_len=512, lora_rank=16))
    # q_proj (4096->4096) and v_proj (4096->1024), 32 layers, rank 16.
    expected = 32 * 16 * ((4096 + 4096) + (4096 + 1024))
    assert lora.trainable_parameter_count == expected
    assert lora.model.gradients == 4 * expected
    assert lora.model.optimizer == 8 * expected
    qlora = estimate_memory(LLAMA, EstimateParams(mode="qlora", max_seq_len=512, lora_rank=16))
    assert qlora.model.weights < 0.4 * lora.model.weights
    all_linear = lora_parameter_count(
        LLAMA, 8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )
    est = estimate_memory(
        LLAMA,
        EstimateParams(
            mode="lora", max_seq_len=512, lora_rank=8, lora_target_modules=("all-linear",)
        ),
    )
    assert est.trainable_parameter_count == all_linear
    with pytest.raises(InvalidArgumentError, match="lora_target_modules"):
        estimate_memory(LLAMA, EstimateParams(mode="lora", lora_target_modules=("nope",)))


# --------------------------------------------------------------------------- catalog


def test_catalog_has_the_required_gpus_and_mig() -> None:
    names = {g.name for g in CATALOG}
    for gpu in (
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H200-141GB",
        "L4",
        "L40S",
        "A10G",
        "T4",
        "V100-16GB",
        "V100-32GB",
        "A100-80GB:MIG-1g.10gb",
        "H100-80GB:MIG-7g.80gb",
    ):
        assert gpu in names


def test_recommendations_cheapest_first_with_headroom() -> None:
    recs = recommend([(LLAMA, EstimateParams(max_seq_len=8192))])
    assert recs.items and not recs.reason
    prices = [r.price_per_hour for r in recs.items]
    assert prices == sorted(prices)
    for r in recs.items:
        assert r.headroom_bytes >= 0
        assert r.required_bytes + r.headroom_bytes <= r.memory_bytes
    assert not any(r.gpu == "T4" and r.count == 1 for r in recs.items)  # 16 GB won't hold it
    assert any(r.gpu.startswith("A100-80GB:MIG") for r in recs.items)


def test_two_models_together_need_more() -> None:
    p = EstimateParams(max_seq_len=4096)
    one = recommend([(LLAMA, p)], smallest_only=True)
    two = recommend([(LLAMA, p), (LLAMA, p)], smallest_only=True)
    cheapest_one = min(r.price_per_hour for r in one.items)
    assert min(r.price_per_hour for r in two.items) > cheapest_one


def test_a_model_that_fits_nowhere_is_an_answer() -> None:
    huge = parse_architecture(
        {
            **load("llama-3-8b"),
            "num_hidden_layers": 4000,
            "hidden_size": 65536,
            "intermediate_size": 262144,
            "num_attention_heads": 512,
            "num_key_value_heads": 512,
        }
    )
    recs = recommend([(huge, EstimateParams(max_seq_len=1024))])
    assert recs.items == ()
    assert "fits nowhere" in recs.reason


def test_optimize_suggests_changes_that_fit() -> None:
    p = EstimateParams(max_seq_len=8192, batch_size=16)
    need = estimate_memory(LLAMA, p).per_gpu.total
    suggestions = optimize(LLAMA, p, 24 * GiB)
    assert need > 24 * GiB
    assert suggestions and suggestions[0].fits
    for s in suggestions:
        assert s.required_bytes <= 24 * GiB
    assert optimize(LLAMA, p, need + 1)[0].change == "no change needed"


# --------------------------------------------------------------------------- caching


def test_ttl_cache_expires_and_evicts() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(ttl_seconds=10, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    assert cache.get("a") == 1
    now[0] = 10.5
    assert cache.get("a") is None
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is None and cache.get("c") == 3
    assert cache.hits == 2 and cache.misses == 2


def test_estimator_reports_cache_hits() -> None:
    now = [0.0]
    estimator = MemoryEstimator(ttl_seconds=60, clock=lambda: now[0])
    source = inline_config(load("llama-3-8b"))
    first, hit1 = estimator.estimate(source, EstimateParams(max_seq_len=4096))
    second, hit2 = estimator.estimate(source, EstimateParams(max_seq_len=4096))
    _third, hit3 = estimator.estimate(source, EstimateParams(max_seq_len=2048))
    assert (hit1, hit2, hit3) == (False, True, False)
    assert first is second
    now[0] = 61
    assert estimator.estimate(source, EstimateParams(max_seq_len=4096))[1] is False
    # Same content, another dict: same key.
    assert estimator.estimate(inline_config(load("llama-3-8b")), EstimateParams(max_seq_len=4096))[
        1
    ]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("config_change", "field"),
    [
        ({"hidden_size": -4096}, "config.hidden_size"),
        ({"hidden_size": "big"}, "config.hidden_size"),
        ({"num_hidden_layers": 1.5}, "config.num_hidden_layers"),
        ({"num_key_value_heads": 7}, "config.num_key_value_heads"),
        ({"vocab_size": None}, "config.vocab_size"),
        ({"tie_word_embeddings": "yes"}, "config.tie_word_embeddings"),
        ({"model_type": 3}, "config.model_type"),
    ],
)
def test_malformed_config_names_the_field(config_change: dict[str, Any], field: str) -> None:
    config = {**load("llama-3-8b"), **config_change}
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        parse_architecture(config)


def test_not_a_config() -> None:
    with pytest.raises(InvalidArgumentError, match="config"):
        parse_architecture({})
    with pytest.raises(InvalidArgumentError, match="config"):
        parse_architecture([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (EstimateParams(batch_size=-1), "batch_size"),
        (EstimateParams(max_seq_len=-5), "max_seq_len"),
        (EstimateParams(dtype="fp7"), "dtype"),
        (EstimateParams(kv_cache_dtype="int4"), "kv_cache_dtype"),
        (EstimateParams(mode="dreaming"), "mode"),
        (EstimateParams(batch_size=1_000_000, max_seq_len=10_000_000), "batch_size x max_seq_len"),
        (EstimateParams(tensor_parallel_size=3), "tensor_parallel_size"),
        (EstimateParams(pipeline_parallel_size=33), "pipeline_parallel_size"),
        (EstimateParams(gpu="B900"), "gpu"),
        (EstimateParams(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
        (EstimateParams(quant_group_size=-3), "quant_group_size"),
        (EstimateParams(mode="training", dtype="int4"), "dtype"),
        (EstimateParams(mode="training", optimizer="lion"), "optimizer"),
        (EstimateParams(zero_stage=4), "zero_stage"),
    ],
)
def test_bad_parameters_name_the_field(params: EstimateParams, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        estimate_memory(LLAMA, params)
    assert info.value.message.startswith(field + ":")


def test_params_key_covers_every_field() -> None:
    assert len(EstimateParams().key()) == len(EstimateParams.__dataclass_fields__)
