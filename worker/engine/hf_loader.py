"""Loading a causal LM for the reference engine: tokenizer and weights from local files
only (never the Hugging Face hub), safetensors checkpoints zero-copy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runtime.errors import InvalidArgumentError
from worker.engine.loading import load_in_thread, require_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["eos_ids", "load_causal_lm"]

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",  # whatever config.json says
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


async def load_causal_lm(
    model_dir: Path, model_name: str, dtype: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer in ``model_dir`` (Hugging Face layout), in ``dtype``.

    Raises NotFoundError if the directory or its config.json is missing,
    InvalidArgumentError for a bad ``dtype``, and FailedPreconditionError if the files
    are there but cannot be loaded (corrupt or unsupported).
    """
    torch_dtype = _DTYPES.get(dtype.lower())
    if torch_dtype is None:
        raise InvalidArgumentError(
            f"dtype must be one of {', '.join(sorted(_DTYPES))}, got {dtype!r}"
        )
    model_dir = require_model_dir(model_dir)
    model, tokenizer = await load_in_thread(
        _load_sync,
        model_dir,
        torch_dtype,
        failure=f"cannot load model {model_name!r} from {model_dir}",
    )
    logger.info(
        "model loaded",
        extra={"model": model_name, "model_dir": str(model_dir), "dtype": str(model.dtype)},
    )
    return model, tokenizer


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every token id that ends a generation: the tokenizer's eos and the eos list of
    generation_config.json / config.json (chat models list their end-of-turn token)."""
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id, model.config.eos_token_id]
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        candidates.append(gen_config.eos_token_id)
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, int):
            ids.add(c)
        else:
            ids.update(int(i) for i in c)
    return frozenset(ids)


def _load_sync(
    model_dir: Path, torch_dtype: torch.dtype | str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load tokenizer and model from local files only (runs in a worker thread)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if any(model_dir.glob("*.safetensors")):
        # Zero copy: the weights are tensors on the mapped checkpoint files (storaged's
        # cache when the model came through it), paged in in parallel.
        from zerocopy import load_pretrained

        dtype = None if torch_dtype == "auto" else torch_dtype
        model = load_pretrained(model_dir, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    else:  # legacy pickle checkpoints: transformers' own loader
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype, local_files_only=True, trust_remote_code=False
        )
    model.eval()
    return model, tokenizer
