"""WorkerService servicer: protobuf <-> domain, nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from helios.v1 import storage_pb2, worker_pb2_grpc
from helios.v1 import worker_pb2 as pb

from openai_compat.protocol import call_info
from runtime.errors import FailedPreconditionError, InvalidArgumentError
from runtime.paths import PathRoots
from worker.adapters import AdapterSpec, with_adapter
from worker.disagg import decode_prefilled
from worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from worker.inference import AUTHORIZATION_HEADER, client_stream
from worker.key_usage import KeyUsageLedger
from worker.kv_client import KVFetcher
from worker.kvtransfer import encode_frames
from worker.memory import memory_report, memory_report_blocks
from worker.metrics import UsageLedger
from worker.models import ModelLifecycle, ModelManager
from worker.prefill_peers import PrefillPeers
from worker.storage_client import StorageClient, StoredModels
from worker_api.tool_wire import guide_from_pb, turn_tools_from_pb
from worker_api.wire import logprobs_to_pb, prefill_pools_from_pb

logger = logging.getLogger(__name__)

_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}

_MODEL_STATES = {
    ModelLifecycle.DOWNLOADING: pb.MODEL_STATE_DOWNLOADING,
    ModelLifecycle.LOADING: pb.MODEL_STATE_LOADING,
    ModelLifecycle.READY: pb.MODEL_STATE_READY,
    ModelLifecycle.DRAINING: pb.MODEL_STATE_DRAINING,
    ModelLifecycle.FAILED: pb.MODEL_STATE_FAILED,
    ModelLifecycle.ASLEEP: pb.MODEL_STATE_ASLEEP,
}

_STORE_TIERS = {
    "ram": storage_pb2.CACHE_TIER_RAM,
    "nvme": storage_pb2.CACHE_TIER_NVME,
    "ssd": storage_pb2.CACHE_TIER_SSD,
    "remote": storage_pb2.CACHE_TIER_REMOTE,
}

DEFAULT_DRAIN_SECONDS = 30.0

ROLES = ("both", "prefill", "decode")
_ROLE_PB = {
    "both": pb.WORKER_ROLE_BOTH,
    "prefill": pb.WORKER_ROLE_PREFILL,
    "decode": pb.WORKER_ROLE_DECODE,
}
# Which generation RPCs each role serves. A prefill worker makes KV caches and hands them
# out; a decode worker only continues them; ``both`` does everything. The control plane
# (LoadModel, UnloadModel, Heartbeat) is served whatever the role.
_ROLE_RPCS = {
    "both": frozenset({"Generate", "Prefill", "Decode", "TransferKVCache"}),
    "prefill": frozenset({"Prefill", "TransferKVCache"}),
    "decode": frozenset({"Decode"}),
}


def generation_request_from_pb(request: pb.GenerateRequest) -> GenerationRequest:
    """The domain request for a GenerateRequest; structural checks only (the engine
    checks what depends on the model, such as the prompt's length)."""
    if not request.request_id:
        raise InvalidArgumentError("request_id: must not be empty")
    s = request.sampling
    if s.max_tokens < 1:
        raise InvalidArgumentError("sampling.max_tokens: must be >= 1")
    if not 0 <= s.temperature < float("inf"):  # NaN fails this too
        raise InvalidArgumentError("sampling.temperature: must be a finite number >= 0")
    if not 0 < s.top_p <= 1:
        raise InvalidArgumentError("sampling.top_p: must be in (0, 1]")
    if s.top_k < 0:
        raise InvalidArgumentError("sampling.top_k: must be >= 0")
    sampling = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        ignore_eos=s.ignore_eos,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        logit_bias=tuple(sorted(s.logit_bias.items())),
        min_tokens=s.min_tokens,
        logprobs=s.logprobs if s.HasField("logprobs") else None,
        echo=s.echo,
        guide=guide_from_pb(s),
    )
    kind = request.WhichOneof("input")
    if kind == "prompt":
        return GenerationRequest(request.request_id, sampling, prompt=request.prompt)
    if kind == "prompt_tokens":
        if not request.prompt_tokens.token_ids:
            raise InvalidArgumentError("prompt_tokens.token_ids: must not be empty")
        return GenerationRequest(
            request.request_id,
            sampling,
            prompt_token_ids=tuple(request.prompt_tokens.token_ids),
        )
    if kind == "chat":
        if not request.chat.messages:
            raise InvalidArgumentError("chat.messages: must not be empty")
        turns = turn_tools_from_pb(request.chat.messages)
        messages = tuple(
            ChatMessage(m.role, m.content, t.tool_calls, t.tool_call_id)
            for m, t in zip(request.chat.messages, turns, strict=True)
        )
        return GenerationRequest(
            request.request_id, sampling, messages=messages, tools_json=request.chat.tools_json
        )
    raise InvalidArgumentError("input: one of prompt or chat is required")


def chunk_to_pb(chunk: GenerationChunk) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        text=chunk.text,
        token_ids=chunk.token_ids,
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        finish_reason=_FINISH_REASONS[chunk.finish_reason],
        logprobs=logprobs_to_pb(chunk.logprobs),
    )


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Serves generations from the models in a :class:`ModelManager`."""

    def __init__(
        self,
        models: ModelManager,
        *,
        worker_id: str,
        advertise_address: str = "",
        kv_fetcher: KVFetcher | None = None,
        storage: StorageClient | None = None,
        role: str = "both",
        usage: UsageLedger | None = None,
        local_roots: PathRoots | None = None,
        prefill_peers: PrefillPeers | None = None,
        key_usage: KeyUsageLedger | None = None,
        rest_port: int = 0,
        rest_socket: str = "",
    ) -> None:
        """``local_roots``: where LoadModel's local_path may point (none by default);
        ``prefill_peers``: a decode worker's prefill pools, which heartbeats update;
        ``key_usage``: the tokens the InferenceService served per API key (heartbeats
        report them); ``rest_port``: the port of the worker's REST endpoint (heartbeats
        report it; 0: none), ``rest_socket`` the Unix socket it also listens on ("":
        none)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self._role = role
        self._local_roots = local_roots if local_roots is not None else PathRoots()
        self._models = models
        # What this worker's InferenceService served, per model, for heartbeats.
        self._usage = usage if usage is not None else UsageLedger()
        self._key_usage = key_usage if key_usage is not None else KeyUsageLedger()
        self._worker_id = worker_id
        self._advertise_address = advertise_address
        self._rest_port = rest_port
        self._rest_socket = rest_socket
        self._kv_fetcher = kv_fetcher or KVFetcher()
        self._storage = storage
        self._stored = StoredModels(storage.cached_models) if storage is not None else None
        self._prefill_peers = prefill_peers

    def _serves(self, rpc: str) -> None:
        """Refuse ``rpc`` when this worker's role does not serve it."""
        if rpc not in _ROLE_RPCS[self._role]:
            served = ", ".join(sorted(_ROLE_RPCS[self._role]))
            raise FailedPreconditionError(
                f"{rpc}: this worker has role {self._role} and serves {served} only"
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        self._serves("Generate")
        generation = generation_request_from_pb(request)
        call = call_info(context)
        # The model, or a LoRA adapter on its base (worker.adapters).
        target = self._models.target(request.model)
        adapter = await self._models.adapters.ref(target.adapter)
        serving = self._models.serve(
            target.model,
            generation.request_id,
            authorization=call.header(AUTHORIZATION_HEADER),
            deadline_s=call.deadline_s,
        )
        # A full queue raises ResourceExhaustedError with retry_after_s: the runtime
        # interceptor sends it as the retry-after trailer.
        async with serving as engine:
            # aclosing: when the client goes away this generator is cancelled, and the
            # engine's stream must be closed right then so it stops computing.
            generation = with_adapter(engine, generation, adapter)
            stream = client_stream(engine, engine.generate(generation))
            async with aclosing(stream):
                async for chunk in stream:
                    yield chunk_to_pb(chunk)

    async def Prefill(
        self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefillResponse:
        self._serves("Prefill")
        generation = generation_request_from_pb(request.request)
        async with self._models.acquire(request.request.model, generation.request_id) as engine:
            result = await engine.prefill(generation)
        return pb.PrefillResponse(
            first=chunk_to_pb(result.first),
            kv_cache_handle=result.kv_handle or "",
            prefill_worker=self._advertise_address if result.kv_handle else "",
        )

    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeResponse]:
        self._serves("Decode")
        generation = generation_request_from_pb(request.request)
        if not request.kv_cache_handle:
            raise InvalidArgumentError("kv_cache_handle: must not be empty")
        if not request.prefill_worker:
            raise InvalidArgumentError("prefill_worker: must not be empty")
        stream = decode_prefilled(
            self._models,
            self._kv_fetcher,
            request.request.model,
            generation,
            kv_handle=request.kv_cache_handle,
            prefill_worker=request.prefill_worker,
            first_token_id=request.first_token_id,
        )
        async with aclosing(stream):
            async for chunk in stream:
                yield pb.DecodeResponse(step=chunk_to_pb(chunk))

    async def TransferKVCache(
        self, request: pb.TransferKVCacheRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TransferKVCacheResponse]:
        self._serves("TransferKVCache")
        if not request.kv_cache_handle:
            raise InvalidArgumentError("kv_cache_handle: must not be empty")
        engine = self._models.engine(request.model)
        layers = await engine.export_kv(request.kv_cache_handle)
        for frame in encode_frames(layers):
            yield pb.TransferKVCacheResponse(
                layer=frame.layer,
                num_layers=frame.num_layers,
                token_offset=frame.token_offset,
                safetensors=frame.data,
            )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LoadModelResponse]:
        if request.local_path:
            # Checked on the text before anything is opened: outside the roots is
            # PERMISSION_DENIED whether the path exists or not.
            path = await asyncio.to_thread(
                self._local_roots.confine, request.local_path, "local_path", "--model-root"
            )
            steps = self._models.load(request.model, path)
        elif self._storage is not None:
            steps = self._models.load_from_store(
                request.model, request.version, self._storage.ensure_model
            )
        else:
            raise FailedPreconditionError(
                "LoadModel: this worker has no storaged configured (--storaged); give local_path"
            )
        async for step in steps:
            yield pb.LoadModelResponse(
                model=step.model,
                state=_MODEL_STATES[step.state],
                progress=step.progress,
                message=step.message,
            )

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        if request.drain_timeout_seconds < 0:
            raise InvalidArgumentError("drain_timeout_seconds: must be >= 0")
        timeout = request.drain_timeout_seconds or DEFAULT_DRAIN_SECONDS
        aborted = await self._models.unload(request.model, timeout, request.keep_asleep)
        return pb.UnloadModelResponse(model=request.model, aborted_requests=aborted)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        if self._prefill_peers is not None and request.HasField("prefill_pools"):
            self._prefill_peers.update(prefill_pools_from_pb(request.prefill_pools))
        if request.HasField("adapters"):
            self._models.adapters.update(
                AdapterSpec(a.adapter, a.base, a.version) for a in request.adapters.adapters
            )
        statuses = self._models.statuses()
        dead = set(await self._models.check_health())
        models = [
            pb.LoadedModel(
                model=s.model,
                state=_MODEL_STATES[s.state],
                engine=s.engine,
                running_requests=s.stats.running_requests,
                # The engine's own queue and the worker's admission queue ahead of it.
                waiting_requests=s.stats.waiting_requests + self._models.admission.queued(s.model),
                kv_cache_usage=s.stats.kv_cache_usage,
                prefix_cache_hit_rate=s.stats.prefix_cache_hit_rate,
                generated_tokens_total=s.stats.generated_tokens_total,
                aborted_requests_total=s.stats.aborted_requests_total,
                error=s.error,
                adapters=s.adapters,
                load_phase_seconds=s.load_phases,
            )
            for s in statuses
        ]
        for entry in models:
            served = self._usage.get(entry.model)
            if served is not None:
                entry.requests_total = served.requests_total
                entry.prompt_tokens_total = served.prompt_tokens_total
                entry.completion_tokens_total = served.completion_tokens_total
                entry.last_request_unix_ms = served.last_request_unix_ms
                entry.first_tokens_total = served.first_tokens_total
                entry.time_to_first_token_seconds_total = served.time_to_first_token_seconds_total
        if dead:
            state = pb.WORKER_STATE_DEGRADED
        elif any(s.state is ModelLifecycle.LOADING for s in statuses):
            state = pb.WORKER_STATE_LOADING
        elif any(s.state is ModelLifecycle.READY for s in statuses):
            state = pb.WORKER_STATE_READY
        else:
            state = pb.WORKER_STATE_IDLE
        capacity, used = self._models.capacity_bytes, self._models.used_bytes
        if memory_report_blocks():
            memory = await asyncio.to_thread(memory_report, capacity, used)
        else:
            memory = memory_report(capacity, used)
        stored = await self._stored.current() if self._stored is not None else {}
        return pb.HeartbeatResponse(
            worker_id=self._worker_id,
            state=state,
            models=models,
            memory_total_bytes=memory.total_bytes,
            memory_free_bytes=memory.free_bytes,
            memory_source=memory.source,
            queue_depth=sum(m.waiting_requests for m in models),
            role=_ROLE_PB[self._role],
            stored_models=[
                pb.StoredModel(model=model, tier=_STORE_TIERS[tier])
                for model, tier in sorted(stored.items())
            ],
            key_tokens=[
                pb.KeyTokens(key_fingerprint=fingerprint, tokens_total=tokens)
                for fingerprint, tokens in sorted(self._key_usage.totals().items())
            ],
            rest_port=self._rest_port,
            rest_socket=self._rest_socket,
        )
