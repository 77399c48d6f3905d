"""InferenceService on the proxy: the shared OpenAI servicer over the CompletionRouter
(cold requests: estimate, place, load, then serve; and, until Envoy routes warm requests
to workers itself, the relay to a worker that has the model READY)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from openai_compat.backend import CallInfo, ModelEntry, Step
from openai_compat.params import Job
from openai_compat.servicer import InferenceServicer as OpenAIServicer
from proxy.estimate import MemoryNeed
from proxy.policies import RouteHint
from proxy.service import CompletionRouter, RequestContext

DEFAULT_SESSION_HEADER = "x-session-id"
# How many prompt characters prefix-aware routing sees.
_PREFIX_CHARS = 256


def _prefix(job: Job) -> str:
    if job.messages is not None:
        text = "".join(f"{role}:{content}\n" for role, content in job.messages)
    else:
        text = job.prompt or ""
    return text[:_PREFIX_CHARS]


class RouterBackend:
    """Generations routed to workers by a :class:`CompletionRouter`."""

    def __init__(
        self, router: CompletionRouter, *, session_header: str = DEFAULT_SESSION_HEADER
    ) -> None:
        self._router = router
        self._session_header = session_header

    def _request(self, job: Job, call: CallInfo) -> RequestContext:
        return RequestContext(
            deadline_s=call.deadline_s,
            hint=RouteHint(prefix=_prefix(job), session=call.header(self._session_header) or ""),
            authorization=call.header("authorization"),
        )

    async def complete(self, job: Job, call: CallInfo) -> Step:
        return await self._router.complete(job, call.deadline_s, self._request(job, call))

    def stream(self, job: Job, call: CallInfo) -> AsyncGenerator[Step, None]:
        return self._router.stream(job, call.deadline_s, self._request(job, call))

    async def list_models(self) -> list[ModelEntry]:
        """Every model the proxy can serve: on agents, in the catalogue, in the registry."""
        control = self._router.control
        models = self._router.pool.models()
        held = await control.registry.refresh() if control.registry is not None else {}
        now = time.time()
        entries = []
        for name in sorted({*models, *control.catalogue, *held}):
            ready, first_seen = models.get(name, (0, now))
            need, warm = control.model_profile(name)
            spec = control.catalogue.get(name)
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
                )
            )
        return entries


class InferenceServicer(OpenAIServicer):
    """OpenAI-compatible completions, routed to workers."""

    def __init__(
        self, router: CompletionRouter, *, session_header: str = DEFAULT_SESSION_HEADER
    ) -> None:
        super().__init__(RouterBackend(router, session_header=session_header))
