"""Accuracy against transformers and vLLM's formulas, on realistic configs (configs/*.json).

Parameters: each architecture is built by transformers on the meta device (no memory,
no weights) and its unique parameters are counted; the estimator must match exactly
(the issue allows 1%). KV cache: vLLM's per-token formula, written out here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from estimator.architecture import EXACT, GENERIC
from estimator.config_json import parse_architecture
from estimator.estimate_params import EstimateParams
from estimator.memory import estimate_memory
from estimator.precision import weight_bytes

CONFIGS = Path(__file__).parent / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.json"))
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config


def transformers_parameter_count(config: dict[str, Any]) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # tied weights are one Parameter: counted once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def test_every_required_architecture_has_a_config() -> None:
    types = {load(n)["model_type"] for n in CONFIG_NAMES}
    required = {
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "phi3", "gpt2", "gpt_neox", "opt", "falcon", "bloom", "deepseek_v2", "deepseek_v3",
    }  # fmt: skip
    assert required <= types


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_parameter_count_matches_transformers(name: str) -> None:
    config = load(name)
    expected = transformers_parameter_count(config)
    arch = parse_architecture(config)
    assert arch.confidence == EXACT
    assert abs(arch.parameter_count - expected) <= expected * 0.01
    assert arch.parameter_count == expected  # in practice: exact


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dense_weights_are_parameters_times_bytes(name: str, dtype: str) -> None:
    arch = parse_architecture(load(name))
    assert weight_bytes(arch, dtype).total == arch.parameter_count * DTYPE_BYTES[dtype]


def vllm_kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int:
    """vLLM: 2 x layers x kv_heads x head_dim x bytes; MLA: (kv_lora_rank + rope) x layers."""
    mt = config["model_type"]
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    if mt in ("deepseek_v2", "deepseek_v3"):
        return (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * layers * dtype_bytes
    hidden = config.get("hidden_size") or config.get("n_embd")
    heads = config.get("num_attention_heads") or config.get("n_head")
    head_dim = config.get("head_dim") or hidden // heads
    if mt == "falcon":
        if config.get("new_decoder_architecture"):
            kv_heads = config["num_kv_heads"]
        elif config.get("multi_query", True):
            kv_heads = 1
        else:
            kv_heads = heads
    else:
        kv_heads = config.get("num_key_value_heads") or heads
    return 2 * layers * kv_heads * head_dim * dtype_bytes


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("kv_dtype", ["fp16", "fp8", "fp32"])
def test_kv_per_token_matches_vllm(name: str, kv_dtype: str) -> None:
    config = load(name)
    est = estimate_memory(
        parse_architecture(config), EstimateParams(kv_cache_dtype=kv_dtype, max_seq_len=1024)
    )
    assert est.kv_cache_bytes_per_token == vllm_kv_bytes_per_token(config, DTYPE_BYTES[kv_dtype])


def test_known_published_sizes() -> None:
    """Sanity against the sizes the model cards state."""
    expected = {
        "llama-3-8b": 8_030_261_248,
        "mistral-7b-v0.1": 7_241_732_096,
        "mixtral-8x7b": 46_702_792_704,
        "gpt2": 124_439_808,
        "bloom-560m": 559_214_592,
    }
    for name, count in expected.items():
        assert parse_architecture(load(name)).parameter_count == count


def test_tied_embeddings_counted_once() -> None:
    tied = load("llama-3.2-1b")
    untied = {**tied, "tie_word_embeddings": False}
    extra = tied["vocab_size"] * tied["hidden_size"]
    assert (
        parse_architecture(untied).parameter_count
        == parse_architecture(tied).parameter_count + extra
    )


def test_unknown_architecture_is_generic_and_says_so() -> None:
    config = {**load("llama-3-8b"), "model_type": "brand_new_lm", "architectures": ["NewLM"]}
    arch = parse_architecture(config)
    assert arch.confidence == GENERIC
    assert any("generic" in note for note in arch.notes)
    # The generic formula is the Llama block: same count for a Llama-shaped config.
    assert arch.parameter_count == parse_architecture(load("llama-3-8b")).parameter_count
    est = estimate_memory(arch, EstimateParams(max_seq_len=128))
    assert est.confidence == GENERIC


def test_model_type_found_from_architectures() -> None:
    config = load("mistral-7b-v0.1")
    del config["model_type"]
    assert parse_architecture(config).confidence == EXACT


def test_moe_active_parameters() -> None:
    arch = parse_architecture(load("mixtral-8x7b"))
    # Mixtral 8x7B: ~12.9B active of 46.7B.
    assert 12.8e9 < arch.active_parameter_count < 13.0e9
