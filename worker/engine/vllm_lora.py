"""LoRA adapters on vLLM: the engine's LoRA settings and each request's LoRARequest.

vLLM loads an adapter itself the first time a request names it (``lora_path``), keeps
up to ``max_cpu_loras`` of them in host memory and batches requests of up to
``max_loras`` different adapters together in one step (its punica kernels). What
Helios adds is a stable identity per adapter: vLLM tells adapters apart by
``lora_int_id``, so each adapter key (id and version) gets one number for the engine's
life, and the adapters vLLM holds (the most recently used ones, as its cache keeps
them) are what heartbeats report.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from runtime.errors import FailedPreconditionError, InvalidArgumentError
from worker.engine.base import AdapterRef

__all__ = ["LoraRequests", "VllmLora"]


@dataclass(frozen=True)
class VllmLora:
    """vLLM's LoRA knobs: ``max_loras`` adapters in one batch (0: LoRA off), of rank at
    most ``max_lora_rank``, ``max_cpu_loras`` kept loaded (None: vLLM's default,
    max_loras)."""

    max_loras: int = 0
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None

    def __post_init__(self) -> None:
        if self.max_loras < 0:
            raise InvalidArgumentError(f"max_loras must be >= 0, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise InvalidArgumentError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise InvalidArgumentError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )

    @property
    def enabled(self) -> bool:
        return self.max_loras > 0

    @property
    def held(self) -> int:
        """How many adapters vLLM keeps loaded."""
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras

    def engine_args(self) -> dict[str, Any]:
        """The AsyncEngineArgs keywords (none when LoRA is off)."""
        if not self.enabled:
            return {}
        args: dict[str, Any] = {
            "enable_lora": True,
            "max_loras": self.max_loras,
            "max_lora_rank": self.max_lora_rank,
        }
        if self.max_cpu_loras is not None:
            args["max_cpu_loras"] = self.max_cpu_loras
        return args


class LoraRequests:
    """One vLLM engine's LoRARequests, by adapter key."""

    def __init__(self, settings: VllmLora, model_name: str) -> None:
        self._settings = settings
        self._model_name = model_name
        self._numbers: dict[str, int] = {}
        # Adapter keys -> ids, most recently used last (what vLLM's LRU cache holds).
        self._recent: OrderedDict[str, str] = OrderedDict()

    def request(self, ref: AdapterRef | None) -> Any:
        """vLLM's LoRARequest for ``ref`` (None for the model alone)."""
        if ref is None:
            return None
        if not self._settings.enabled:
            raise FailedPreconditionError(
                f"model {self._model_name} runs on vLLM without LoRA on this worker"
                " (start it with --max-loras N to serve adapters)"
            )
        from vllm.lora.request import LoRARequest

        number = self._numbers.setdefault(ref.key, len(self._numbers) + 1)
        self._recent[ref.key] = ref.adapter_id
        self._recent.move_to_end(ref.key)
        while len(self._recent) > self._settings.held:
            self._recent.popitem(last=False)
        return LoRARequest(lora_name=ref.key, lora_int_id=number, lora_path=str(ref.path))

    def ids(self) -> tuple[str, ...]:
        """The adapter ids vLLM holds now (as its cache keeps the most recent)."""
        return tuple(sorted(set(self._recent.values())))
