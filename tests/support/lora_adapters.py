"""LoRA adapters made locally with peft for the tests (no network): random LoRA pairs,
seeded, large enough that the adapter changes what a model says."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch


def make_lora_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    targets: Sequence[str] = ("q_proj", "v_proj", "o_proj"),
    strength: float = 1.0,
    base_name: str | None = None,
) -> Path:
    """A LoRA adapter for the model in ``base_dir``, written to ``out_dir`` in peft's
    layout (adapter_config.json, adapter_model.safetensors). Each pair's product has
    about ``strength`` times the size of the layer it adapts (random directions from
    ``seed``). ``base_name`` goes into base_model_name_or_path (default: ``base_dir``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            weight = module.get_base_layer().weight
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            # B @ A x has about strength * |W x|: A keeps the input's norm, B scales to W's.
            a.copy_(torch.randn(a.shape, generator=generator) / a.shape[1] ** 0.5)
            scale = strength * float(weight.float().std()) * (weight.shape[1] / rank) ** 0.5
            b.copy_(torch.randn(b.shape, generator=generator) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    config_path = out_dir / "adapter_config.json"
    written = json.loads(config_path.read_text())
    written["base_model_name_or_path"] = base_name or str(base_dir)
    config_path.write_text(json.dumps(written, indent=2))
    (out_dir / "README.md").unlink(missing_ok=True)
    return out_dir
