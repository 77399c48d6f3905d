"""InferenceService on the proxy: the shared OpenAI servicer over the cold path (the
requests Envoy has no route for: estimate, place, load, then serve; see
:mod:`proxy.cold_path`)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from openai_compat.backend import CallInfo, ModelEntry, Step
from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.params import Job
from openai_compat.servicer import InferenceServicer as OpenAIServicer
from proxy.cold_path import ColdPath, RequestContext
from proxy.estimate import MemoryNeed


class ColdPathBackend:
    """Generations served by a :class:`ColdPath`."""

    def __init__(self, path: ColdPath) -> None:
        self._path = path

    @staticmethod
    def _request(call: CallInfo) -> RequestContext:
        return RequestContext(
            deadline_s=call.deadline_s, authorization=call.header("authorization")
        )

    async def complete(self, job: Job, call: CallInfo) -> Step:
        return await self._path.complete(job, self._request(call))

    def stream(self, job: Job, call: CallInfo) -> AsyncGenerator[Step, None]:
        return self._path.stream(job, self._request(call))

    async def embed(self, job: EmbeddingJob, call: CallInfo) -> EmbeddingResult:
        return await self._path.embed(job, self._request(call))

    async def list_models(self) -> list[ModelEntry]:
        """Every model the proxy can serve: on agents, in the catalogue, in the registry."""
        cold = self._path.cold
        models = self._path.pool.models()
        held = await cold.registry.refresh() if cold.registry is not None else {}
        now = time.time()
        entries = []
        for name in sorted({*models, *cold.catalogue, *held}):
            # A LoRA adapter runs where its base does: its replicas and warmth are the
            # base's, its size its own files'.
            parent = held[name].base if name in held else ""
            ready, first_seen = models.get(parent or name, (0, now))
            need, warm = cold.model_profile(parent or name)
            if parent:
                need = None
            spec = cold.catalogue.get(name)
            if need is None and name in held:  # not estimated yet: the registry's size
                need = MemoryNeed(held[name].total_bytes, "manifest")
            entries.append(
                ModelEntry(
                    id=name,
                    created=int(min(first_seen, now)),
                    ready_replicas=ready,
                    memory_bytes=need.bytes if need else 0,
                    memory_source=need.source if need else "",
                    warm_status=warm,
                    min_replicas=spec.min_replicas if spec else 0,
                    max_replicas=spec.max_replicas if spec else 0,
                    parent=parent,
                )
            )
        return entries


class InferenceServicer(OpenAIServicer):
    """OpenAI-compatible completions: the proxy's cold path."""

    def __init__(self, path: ColdPath) -> None:
        super().__init__(ColdPathBackend(path))
