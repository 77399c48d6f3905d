"""What a model directory says about embeddings: whether the model is an embedding model,
and how its token vectors become one vector (sentence-transformers' layout, as vLLM's
pooling runner reads it too).

A directory is an embedding model when sentence-transformers' ``modules.json`` lists a
Pooling module, or when ``config.json``'s architecture is a bare encoder (``BertModel``,
``XLMRobertaModel``, ...) rather than a generative head (``...ForCausalLM``). Reads small
JSON files only (no torch): the worker decides which engine to build from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import FailedPreconditionError, InvalidArgumentError

_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_POOLING_MODULE = "sentence_transformers.models.Pooling"
_NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
# sentence-transformers' pooling flags -> the modes this worker computes.
_POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


@dataclass(frozen=True)
class PoolingConfig:
    """How an embedding model's token vectors become the input's vector."""

    mode: str = "mean"  # mean | cls | last
    normalize: bool = True
    # The most tokens one input may have (sentence-transformers' max_seq_length, else the
    # model's position embeddings); None: not known.
    max_tokens: int | None = None
    # Shorter lengths the model was trained to give (Matryoshka): None when it was not,
    # () when any length up to its own is fine.
    matryoshka_dimensions: tuple[int, ...] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FailedPreconditionError(f"{path.name}: cannot be read: {exc}") from exc


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    modules = _read_json(model_dir / "modules.json")
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def is_embedding_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds an embedding model (see the module's docstring)."""
    if any(m.get("type") == _POOLING_MODULE for m in _modules(model_dir)):
        return True
    config = _read_json(model_dir / "config.json")
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list) or not architectures:
        return False
    first = str(architectures[0])
    return first.endswith("Model") and not first.endswith(_GENERATIVE_SUFFIXES)


def _matryoshka(config: dict[str, Any]) -> tuple[int, ...] | None:
    dimensions = config.get("matryoshka_dimensions")
    if isinstance(dimensions, list) and dimensions:
        return tuple(sorted(int(d) for d in dimensions))
    return () if config.get("is_matryoshka") is True else None


def pooling_config(model_dir: Path) -> PoolingConfig:
    """The pooling of the embedding model in ``model_dir`` (mean pooling and L2
    normalisation when the directory does not say, as for a bare encoder)."""
    config = _read_json(model_dir / "config.json")
    config = config if isinstance(config, dict) else {}
    modules = _modules(model_dir)
    mode, normalize = "mean", True
    pooling = next((m for m in modules if m.get("type") == _POOLING_MODULE), None)
    if pooling is not None:
        settings = _read_json(model_dir / str(pooling.get("path", "")) / "config.json") or {}
        chosen = [mode for flag, mode in _POOLING_MODES.items() if settings.get(flag)]
        others = [
            k
            for k, v in settings.items()
            if k.startswith("pooling_mode") and v and k not in _POOLING_MODES
        ]
        if others or len(chosen) > 1:
            raise FailedPreconditionError(
                f"pooling {', '.join(others or chosen)} is not supported (mean, cls, last)"
            )
        mode = chosen[0] if chosen else "mean"
        normalize = any(m.get("type") == _NORMALIZE_MODULE for m in modules)
    sbert = _read_json(model_dir / "sentence_bert_config.json")
    max_tokens = sbert.get("max_seq_length") if isinstance(sbert, dict) else None
    if not isinstance(max_tokens, int):
        positions = config.get("max_position_embeddings")
        max_tokens = positions if isinstance(positions, int) else None
    return PoolingConfig(mode, normalize, max_tokens, _matryoshka(config))


def checked_dimensions(
    model: str, dimensions: int | None, native: int, config: PoolingConfig
) -> int | None:
    """The length to cut vectors to for a request's ``dimensions`` (None: the model's own
    ``native`` length), or InvalidArgumentError naming the field."""
    if dimensions is None or dimensions == native:
        return None
    allowed = config.matryoshka_dimensions
    if allowed is None:
        raise InvalidArgumentError(
            f"dimensions: model {model} gives {native}-dimensional embeddings and was not"
            " trained for shorter ones (Matryoshka); leave dimensions out"
        )
    if not 1 <= dimensions <= native:
        raise InvalidArgumentError(f"dimensions: must be in [1, {native}], got {dimensions}")
    if allowed and dimensions not in allowed:
        choices = ", ".join(str(d) for d in allowed)
        raise InvalidArgumentError(f"dimensions: model {model} allows {choices}")
    return dimensions
