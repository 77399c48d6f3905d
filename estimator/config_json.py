"""Reading a Hugging Face ``config.json`` into an :class:`estimator.architecture.Architecture`.

:func:`parse_architecture` picks the family from ``model_type`` (or ``architectures[0]``),
lets that family's function in :mod:`estimator.families` inventory the parameters, and
freezes the result. Architectures it does not know fall back to the generic Llama-like
formula and say so (:attr:`Architecture.confidence` is ``"generic"``).

No protobuf here: errors are :class:`runtime.errors.InvalidArgumentError` naming the
offending ``config.<field>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from estimator.architecture import EXACT, GENERIC, Architecture
from estimator.families import gpt_style
from estimator.families.build import FamilyBuild
from estimator.families.config_reader import ConfigReader
from estimator.families.deepseek import deepseek
from estimator.families.llama import llama_like
from runtime.errors import InvalidArgumentError

__all__ = ["KNOWN_MODEL_TYPES", "parse_architecture"]

_FAMILIES: dict[str, tuple[str, Callable[[ConfigReader, str], FamilyBuild]]] = {
    "llama": ("llama", llama_like),
    "mistral": ("llama", llama_like),
    "mixtral": ("llama", llama_like),
    "qwen2": ("llama", llama_like),
    "qwen3": ("llama", llama_like),
    "qwen3_moe": ("llama", llama_like),
    "gemma": ("llama", llama_like),
    "gemma2": ("llama", llama_like),
    "phi3": ("llama", llama_like),
    "deepseek_v2": ("deepseek", deepseek),
    "deepseek_v3": ("deepseek", deepseek),
    "gpt2": ("gpt2", gpt_style.gpt2),
    "gpt_neox": ("gpt_neox", gpt_style.gpt_neox),
    "opt": ("opt", gpt_style.opt),
    "falcon": ("falcon", gpt_style.falcon),
    "bloom": ("bloom", gpt_style.bloom),
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
    c = ConfigReader(config)
    notes: list[str] = []
    if key in _FAMILIES:
        family, build = _FAMILIES[key]
        confidence = EXACT
    else:
        family, build, confidence = "generic", llama_like, GENERIC
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
