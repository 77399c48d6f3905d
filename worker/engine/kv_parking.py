"""The reference engine's KV caches across prefill/decode disaggregation: a prefilled
request's cache parked until its decode worker fetches it (once, within a TTL), and a
transferred cache rebuilt on the decode side."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from runtime.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

    from worker.kvtransfer import KVLayer

__all__ = ["ParkedCaches", "rebuild_cache"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Parked:
    past: Any  # transformers DynamicCache
    tokens: int
    created: float


class ParkedCaches:
    """Prefilled caches by handle, each dropped once fetched or ``ttl_s`` old."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._parked: dict[str, _Parked] = {}

    def park(self, past: Any, tokens: int) -> str:
        """Keep ``past`` (a cache of ``tokens`` tokens); the handle that fetches it."""
        handle = secrets.token_hex(16)
        self._parked[handle] = _Parked(past=past, tokens=tokens, created=time.monotonic())
        return handle

    def take(self, handle: str) -> list[KVLayer]:
        """The cache parked under ``handle``, layer by layer, removed from here."""
        self.expire()
        parked = self._parked.pop(handle, None)
        if parked is None:
            raise NotFoundError(
                f"kv cache {handle!r} is not on this worker (never made, already fetched or"
                f" expired after {self._ttl_s:.0f}s)"
            )
        return [(layer.keys, layer.values) for layer in parked.past.layers]

    def expire(self) -> None:
        now = time.monotonic()
        for handle in [h for h, p in self._parked.items() if now - p.created > self._ttl_s]:
            del self._parked[handle]
            logger.info("parked kv cache expired", extra={"kv_handle": handle})

    def tokens(self) -> int:
        """The tokens held in parked caches (the engine's KV usage counts them)."""
        return sum(p.tokens for p in self._parked.values())

    def clear(self) -> None:
        self._parked.clear()


def rebuild_cache(
    model: PreTrainedModel, kv: Sequence[KVLayer], prompt_len: int, model_name: str
) -> DynamicCache:
    """A DynamicCache on ``model``'s device filled layer by layer with a transferred
    prompt cache (blocking: runs in the engine's threads)."""
    from transformers import DynamicCache

    config = model.config
    num_layers = int(config.num_hidden_layers)
    if len(kv) != num_layers:
        raise InvalidArgumentError(
            f"kv cache has {len(kv)} layers; model {model_name!r} has {num_layers}"
        )
    cache = DynamicCache(config=config)
    parameter = next(model.parameters())
    for index, (key, value) in enumerate(kv):
        if int(key.shape[2]) != prompt_len:
            raise InvalidArgumentError(
                f"kv cache layer {index} holds {int(key.shape[2])} tokens; the prompt"
                f" has {prompt_len} on this worker (different model or tokenizer?)"
            )
        cache.update(_like(key, parameter), _like(value, parameter), index)
    return cache


def _like(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=parameter.device, dtype=parameter.dtype)
