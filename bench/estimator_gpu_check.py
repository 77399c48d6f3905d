"""The estimator against a real GPU: predicted vs measured weights, KV cache, prefill
activations and the memory outside PyTorch's allocator (CUDA context, libraries).

Needs CUDA (run it where a GPU is). Models are built from their config with random
weights on the GPU (no download; memory does not depend on the values), in bf16, and run
with Hugging Face transformers:

- weights: bytes allocated once the model is on the GPU;
- KV cache: the key/value tensors after a prefill of ``--batch`` x ``--seq`` tokens (fed
  in chunks of the estimator's prefill chunk, as an engine would), per token;
- activations: the peak above weights + cache during one chunk of that prefill;
- outside the allocator: NVML's used memory less what PyTorch reserved, less what NVML
  already counted used before this process touched the GPU (the driver's own share).

Also reports the worker's NVML reading (worker/memory.py), the figure its heartbeats
carry and its vLLM sizing budget starts from.

    python bench/estimator_gpu_check.py [--batch 4] [--seq 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.config_json import parse_architecture
from estimator.estimate_params import EstimateParams
from estimator.memory import estimate_memory
from worker.memory import nvml_memory

MIB = 1024**2

# The Helios default model's shape (SmolLM2-135M-Instruct) and a Llama-3-8B shape.
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
}


def measure(
    config: dict[str, Any], batch: int, seq: int, used_before: int
) -> list[tuple[str, int, int]]:
    """(part, estimated bytes, measured bytes) rows for one model."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

    estimate = estimate_memory(
        parse_architecture(config), EstimateParams(batch_size=batch, max_seq_len=seq)
    )
    parts = estimate.model
    chunk_tokens = estimate.params.prefill_chunk_tokens

    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=torch.bfloat16)
    model.eval()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - base

    cache = DynamicCache()
    per_seq_chunk = max(1, chunk_tokens // batch)
    activation_peak = 0
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        for start in range(0, seq, per_seq_chunk):
            length = min(per_seq_chunk, seq - start)
            ids = torch.randint(
                0, config["vocab_size"], (batch, length), device="cuda", generator=generator
            )
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            # What the chunk needed above what stayed (weights + the cache so far),
            # less the cache the chunk added: its transient working set.
            added_cache = torch.cuda.memory_allocated() - before
            activation_peak = max(
                activation_peak, torch.cuda.max_memory_allocated() - before - added_cache
            )
    kv = sum(
        tensor.numel() * tensor.element_size()
        for layer in cache.layers
        for tensor in (layer.keys, layer.values)
        if tensor is not None
    )
    nvml = nvml_memory()
    outside = (nvml[0] - nvml[1]) - used_before - torch.cuda.memory_reserved() if nvml else 0
    rows = [
        ("weights", parts.weights, weights),
        (f"KV cache ({batch}x{seq} tokens)", parts.kv_cache, kv),
        ("KV bytes per token", estimate.kv_cache_bytes_per_token, kv // (batch * seq)),
        (f"activations (chunk {chunk_tokens})", parts.activations, activation_peak),
        ("outside the allocator (overhead)", parts.overhead, outside),
    ]
    del model, cache
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args()
    reading = nvml_memory()
    if reading is None:
        raise SystemExit("no GPU visible to NVML: this check needs one")
    import torch

    print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(
        f"worker NVML reading before any model: total {reading[0] / MIB:,.0f} MiB,"
        f" free {reading[1] / MIB:,.0f} MiB (used before this process:"
        f" {(reading[0] - reading[1]) / MIB:,.0f} MiB)"
    )
    print()
    print(f"{'model':<14} {'part':<34} {'estimated MiB':>14} {'measured MiB':>13} {'est/meas':>9}")
    for name, config in MODELS.items():
        rows = measure(config, args.batch, args.seq, reading[0] - reading[1])
        for part, estimated, measured in rows:
            per_token = part.startswith("KV bytes")
            unit = 1 if per_token else MIB
            ratio = f"{estimated / measured:.2f}" if measured > 0 else "-"
            suffix = " (bytes)" if per_token else ""
            print(
                f"{name:<14} {part + suffix:<34} {estimated / unit:>14,.1f}"
                f" {measured / unit:>13,.1f} {ratio:>9}"
            )


if __name__ == "__main__":
    main()
