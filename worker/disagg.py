"""Disaggregated serving on a decode-role worker (domain: no protobuf).

Envoy routes a model's warm requests to its decode pool when it has a prefill pool too
(proxy/xds_snapshot.py). Such a worker serves them as llm-d's decode-side sidecar does:
it picks a prefill worker of the model's pool (:class:`worker.prefill_peers.PrefillPeers`,
which the control plane's heartbeats fill), runs Prefill there, hands the first token
to the client at once, then decodes here from the prefill worker's KV cache, which it
pulls straight from that worker (TransferKVCache, or vLLM's KV connector). The run and
its failure rules are :mod:`worker_api.disagg`'s, the proxy's too: a Prefill that fails
goes to another prefill worker; a failure after the first token ends the stream (the
REST late-error chunk, or a gRPC status). A client gone closes the run: the Prefill call
is cancelled, or the local decode's engine stream closed (the request aborted there).

:func:`decode_prefilled` is the decode half itself, also what WorkerService.Decode runs
when a driver elsewhere (the proxy) ran Prefill.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Set
from contextlib import aclosing
from typing import Protocol

from prometheus_client import Counter

from openai_compat.backend import Step
from openai_compat.params import Job
from runtime.errors import FailedPreconditionError, UnavailableError
from worker.engine.base import FinishReason, GenerationChunk, GenerationRequest
from worker.inference import client_stream, generation_request
from worker.kvtransfer import KVLayer
from worker.models import ModelManager
from worker.prefill_peers import PrefillPeers
from worker_api.disagg import DisaggregatedRun, Phase, PrefillResult

# The decode address of a run this worker drives: itself (never dialled).
HERE = "(this worker)"
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.05

RETRIES = Counter(
    "helios_worker_disaggregated_retries_total",
    "Phases of this decode worker's disaggregated requests run again elsewhere before the"
    " client had a decoded token (phase: prefill -- another prefill worker; decode -- a"
    " fresh prefill and a new decode here).",
    ["model", "phase"],
)


class KVSource(Protocol):
    """Where a parked KV cache comes from (worker.kv_client.KVFetcher over gRPC)."""

    async def fetch(self, address: str, model: str, handle: str) -> list[KVLayer]:
        """The layers of the cache ``handle`` parked on the worker at ``address``."""
        ...


class PrefillCaller(Protocol):
    """Prefill on a peer (worker.peer_client.PrefillClient over gRPC)."""

    async def prefill(self, address: str, job: Job, deadline_s: float | None) -> PrefillResult:
        """Prefill ``job`` on the worker at ``address``."""
        ...


async def decode_prefilled(
    models: ModelManager,
    kv_source: KVSource,
    model: str,
    request: GenerationRequest,
    *,
    kv_handle: str,
    prefill_worker: str,
    first_token_id: int,
) -> AsyncGenerator[GenerationChunk, None]:
    """The steps after the first of ``request``, prefilled on ``prefill_worker`` whose KV
    cache is parked there under ``kv_handle``. Closing this generator (client gone)
    closes the engine's stream, which aborts the request in the engine."""
    async with models.acquire(model, request.request_id) as engine:
        if not engine.supports_disaggregation:
            raise FailedPreconditionError(engine.disaggregation_unsupported_reason)
        kv = (
            []
            if engine.kv_via_connector
            else await kv_source.fetch(prefill_worker, model, kv_handle)
        )
        stream = client_stream(engine, engine.decode(request, first_token_id, kv))
        async with aclosing(stream):
            async for chunk in stream:
                yield chunk


class _DecodeHere:
    """:class:`worker_api.disagg.Workers` for one request this worker drives: the
    model's prefill pool, and this worker as its only decode worker. A decode here that
    fails before its first step is retried here, after a fresh Prefill (most such
    failures are the KV cache's: its prefill worker died, or the cache expired)."""

    def __init__(self, split: PrefillElsewhere, model: str) -> None:
        self._split = split
        self._model = model

    def pick(self, phase: Phase, exclude: Set[str]) -> str | None:
        if phase is Phase.DECODE:
            return HERE
        return self._split.peers.pick(self._model, exclude)

    async def prefill(self, address: str, job: Job, deadline_s: float | None) -> PrefillResult:
        with self._split.peers.lease(address):
            return await self._split.caller.prefill(address, job, deadline_s)

    async def decode(
        self,
        address: str,
        job: Job,
        kv: PrefillResult,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        chunks = decode_prefilled(
            self._split.models,
            self._split.kv_source,
            job.model,
            generation_request(job),
            kv_handle=kv.kv_handle,
            prefill_worker=kv.prefill_worker,
            first_token_id=first_token_id,
        )
        async with aclosing(chunks):
            async for chunk in chunks:
                if chunk.finish_reason is FinishReason.ABORT:
                    raise UnavailableError(
                        f"model {job.model}: the decode was aborted on this worker"
                        " (the model is being unloaded)"
                    )
                yield Step(
                    chunk.text, chunk.prompt_tokens, chunk.completion_tokens, chunk.finish_reason
                )

    def succeeded(self, address: str) -> None:
        if address != HERE:
            self._split.peers.succeeded(address)

    def failed(self, address: str) -> None:
        # This worker's own engine failing is its health check's to report.
        if address != HERE:
            self._split.peers.failed(address)

    def retried(self, phase: Phase) -> None:
        RETRIES.labels(self._model, phase.value).inc()


class PrefillElsewhere:
    """How a decode-role worker serves whole requests: Prefill on its models' prefill
    pools, Decode on its own engines."""

    def __init__(
        self,
        models: ModelManager,
        peers: PrefillPeers,
        caller: PrefillCaller,
        kv_source: KVSource,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        self.models = models
        self.peers = peers
        self.caller = caller
        self.kv_source = kv_source
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    def check(self, model: str) -> None:
        """Raise UnavailableError unless ``model`` can be served here now: it has a
        prefill pool and this worker's engine for it can decode a prefilled request."""
        if not self.peers.pool(model):
            raise UnavailableError(
                f"model {model} has no prefill worker known to this decode worker"
            )
        engine = self.models.engine(model)
        if not engine.supports_disaggregation:
            raise UnavailableError(
                f"model {model}: {engine.disaggregation_unsupported_reason} on this worker"
            )

    def steps(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]:
        """``job``'s steps: the first from a prefill worker, the rest decoded here."""
        first = self.peers.pick(job.model)
        if first is None:
            raise UnavailableError(
                f"model {job.model} has no prefill worker known to this decode worker"
            )
        run = DisaggregatedRun(
            _DecodeHere(self, job.model),
            job,
            None if deadline_s is None else time.monotonic() + deadline_s,
            first,
            HERE,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
        )
        return run.steps()
