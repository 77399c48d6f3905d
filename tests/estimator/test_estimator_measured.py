"""The estimate vs memory actually allocated on the CPU engine (weights + KV cache).

Method: load (tiny model) or build with random weights (~125M-parameter Llama), run one
forward pass of ``batch x seq`` tokens with a transformers ``DynamicCache``, then count
the bytes of every tensor actually held: the model's unique parameters and buffers
(``numel x element_size``) and the cache's key/value tensors of every layer. The
estimator's ``weights_bytes + kv_cache_bytes`` for the same config, dtype, batch and length
must be within 5% of that (activations and runtime overhead are not measured here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from estimator.config_json import parse_architecture
from estimator.estimate_params import EstimateParams
from estimator.memory import estimate_memory
from estimator.models import config_from_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def model_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def cache_bytes(model: Any, batch: int, seq: int) -> int:
    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(
        0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    total = 0
    for layer in out.past_key_values.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
    return total


def check(config: dict[str, Any], model: Any, dtype: str, batch: int, seq: int) -> float:
    measured_weights = model_bytes(model)
    measured_kv = cache_bytes(model, batch, seq)
    est = estimate_memory(
        parse_architecture(config), EstimateParams(dtype=dtype, batch_size=batch, max_seq_len=seq)
    )
    estimated = est.model.weights + est.model.kv_cache
    measured = measured_weights + measured_kv
    assert est.model.kv_cache == measured_kv  # the KV formula is exact
    error = abs(estimated - measured) / measured
    assert error < 0.05, (estimated, measured)
    return error


def test_tiny_model_weights_and_kv_within_5_percent(tmp_path: Path) -> None:
    from models.tinymodel import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = dict(config_from_dir(str(path)).load())
    check(config, model, "fp32", batch=4, seq=256)


def test_100m_llama_weights_and_kv_within_5_percent() -> None:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    cfg = transformers.LlamaConfig(**config)
    # Built on the meta device then materialised in bf16 with random weights: the same
    # tensors as a normal build, without transformers' slower per-module init.
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # real inv_freq
    model.eval()
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 130e6
    check(config, model, "bf16", batch=2, seq=64)
