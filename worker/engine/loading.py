"""What the generating engines' loaders share: the checks of a model directory before
a library sees it (a path that does not exist would be taken for a Hugging Face hub repo
id), and the load itself off the event loop with its failures made the operator's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import FailedPreconditionError, HeliosError, NotFoundError

__all__ = ["load_in_thread", "require_model_dir"]

_T = TypeVar("_T")


def require_model_dir(model_dir: Path) -> Path:
    """``model_dir`` as a Path, or NotFoundError when it is no Hugging Face model
    directory (missing, or without a config.json)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NotFoundError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise NotFoundError(
            f"model directory {model_dir} has no config.json (not a Hugging Face model)"
        )
    return model_dir


async def load_in_thread(load: Callable[..., _T], *args: Any, failure: str) -> _T:
    """``load(*args)`` in a thread. A HeliosError stays what it is; anything else
    (corrupt JSON, truncated weights, an unknown architecture, no memory for the KV
    cache) is FailedPreconditionError: ``failure`` (what could not be loaded from where)
    and the cause, so that an operator can act on it."""
    try:
        return await asyncio.to_thread(load, *args)
    except HeliosError:
        raise
    except Exception as exc:
        raise FailedPreconditionError(f"{failure}: {type(exc).__name__}: {exc}") from exc
