"""WorkerConnection over gRPC: the proxy's outbound protobuf edge."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

import grpc
from helios.v1 import (
    estimator_pb2,
    estimator_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    storage_pb2,
    worker_pb2_grpc,
)
from helios.v1 import worker_pb2 as pb

from openai_compat.backend import Step
from openai_compat.embedding_protocol import embedding_job_to_pb, embedding_result_from_pb
from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.params import Job
from proxy.adapters import Adapter
from proxy.fleet import (
    AgentState,
    CacheLevel,
    ModelOnAgent,
    WorkerRole,
    WorkerStatus,
)
from proxy.served import ServedTotals
from proxy.worker_errors import relay_error
from runtime.channels import create_channel
from runtime.errors import HeliosError, UnavailableError
from runtime.grpc_errors import error_code, error_from_rpc
from runtime.limits import MAX_SOCKET_PATH_BYTES
from worker_api.disagg import PrefillPeer, PrefillResult
from worker_api.wire import job_to_pb, prefill_pools_to_pb, prefill_result_from_pb, step_from_pb

_MODEL_STATES = {
    pb.MODEL_STATE_DOWNLOADING: "downloading",
    pb.MODEL_STATE_LOADING: "loading",
    pb.MODEL_STATE_READY: "ready",
    pb.MODEL_STATE_DRAINING: "draining",
    pb.MODEL_STATE_FAILED: "failed",
    pb.MODEL_STATE_ASLEEP: "asleep",
}
_AGENT_STATES = {
    pb.WORKER_STATE_IDLE: AgentState.IDLE,
    pb.WORKER_STATE_LOADING: AgentState.LOADING,
    pb.WORKER_STATE_READY: AgentState.READY,
    pb.WORKER_STATE_DRAINING: AgentState.DRAINING,
    pb.WORKER_STATE_DEGRADED: AgentState.DEGRADED,
}

_ROLES = {
    pb.WORKER_ROLE_BOTH: WorkerRole.BOTH,
    pb.WORKER_ROLE_PREFILL: WorkerRole.PREFILL,
    pb.WORKER_ROLE_DECODE: WorkerRole.DECODE,
}

# storaged's tiers as the proxy ranks them: SSD counts as NVMe (local disk); a tier the
# proxy does not know (or none) as REMOTE (the files must be downloaded).
_CACHE_LEVELS = {
    storage_pb2.CACHE_TIER_RAM: CacheLevel.RAM,
    storage_pb2.CACHE_TIER_NVME: CacheLevel.NVME,
    storage_pb2.CACHE_TIER_SSD: CacheLevel.NVME,
}


def _relay_error(
    address: str, error: grpc.aio.AioRpcError, deadline_at: float | None
) -> HeliosError:
    """The worker's failures (engine, process, transport) as UnavailableError, named so
    operators can find it: the only errors the proxy retries and counts against the
    worker. The request's own errors keep their status (see proxy.worker_errors)."""
    return relay_error(address, error_code(error.code()), error.details(), deadline_at=deadline_at)


def _socket_path(path: str) -> str:
    """A reported Unix socket path as Envoy may be handed it: absolute, no NUL, at most
    what sun_path holds; anything else is no socket ("")."""
    if path.startswith("/") and "\0" not in path and len(path.encode()) <= MAX_SOCKET_PATH_BYTES:
        return path
    return ""


def _deadline_at(deadline_s: float | None) -> float | None:
    """When a call made now with ``deadline_s`` times out (time.monotonic())."""
    return None if deadline_s is None else time.monotonic() + deadline_s


class GrpcWorkerConnection:
    """Talks to one worker's WorkerService."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = create_channel(address)
        self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)
        # The worker's OpenAI front (a cold embeddings request is relayed to it as is).
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)

    async def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]:
        deadline_at = _deadline_at(deadline_s)
        call = self._stub.Generate(job_to_pb(job), timeout=deadline_s)
        try:
            async for response in call:
                yield step_from_pb(response, self.address)
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, deadline_at) from error
        finally:
            # Closed early (client gone, error): cancel the RPC so the worker stops.
            call.cancel()

    async def embed(self, job: EmbeddingJob, deadline_s: float | None) -> EmbeddingResult:
        deadline_at = _deadline_at(deadline_s)
        # base64: the float32 values exactly, in a quarter of the bytes of numbers.
        request = inference_pb2.CreateEmbeddingRequest(params=embedding_job_to_pb(job, "base64"))
        try:
            response = await self._inference.CreateEmbedding(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, deadline_at) from error
        return embedding_result_from_pb(response)

    async def prefill(self, job: Job, deadline_s: float | None) -> PrefillResult:
        deadline_at = _deadline_at(deadline_s)
        try:
            response = await self._stub.Prefill(
                pb.PrefillRequest(request=job_to_pb(job)), timeout=deadline_s
            )
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, deadline_at) from error
        return prefill_result_from_pb(response, self.address)

    async def decode(
        self,
        job: Job,
        kv_handle: str,
        prefill_worker: str,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        deadline_at = _deadline_at(deadline_s)
        call = self._stub.Decode(
            pb.DecodeRequest(
                request=job_to_pb(job),
                kv_cache_handle=kv_handle,
                prefill_worker=prefill_worker,
                first_token_id=first_token_id,
            ),
            timeout=deadline_s,
        )
        try:
            async for response in call:
                yield step_from_pb(response.step, self.address)
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, deadline_at) from error
        finally:
            call.cancel()  # closed early: the decode worker aborts its engine request

    async def heartbeat(
        self,
        deadline_s: float,
        prefill_pools: Mapping[str, Sequence[PrefillPeer]] | None = None,
        adapters: Sequence[Adapter] | None = None,
    ) -> WorkerStatus:
        request = pb.HeartbeatRequest()
        if prefill_pools is not None:
            request.prefill_pools.CopyFrom(prefill_pools_to_pb(prefill_pools))
        if adapters is not None:
            request.adapters.SetInParent()  # an empty table is a table too
            for a in adapters:
                request.adapters.adapters.add(adapter=a.adapter, base=a.base, version=a.version)
        try:
            response = await self._stub.Heartbeat(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            # The proxy's own deadline: a heartbeat that misses it is the worker's failure.
            raise _relay_error(self.address, error, None) from error
        models = tuple(
            ModelOnAgent(
                model=m.model,
                state=_MODEL_STATES.get(m.state, "failed"),
                running=m.running_requests,
                waiting=m.waiting_requests,
                kv_cache_usage=m.kv_cache_usage,
                error=m.error,
                adapters=tuple(m.adapters),
                load_phases=tuple(m.load_phase_seconds.items()),
            )
            for m in response.models
        )
        state = _AGENT_STATES.get(response.state, AgentState.IDLE)
        # A worker downloading weights reports LOADING; its models say which.
        if state is AgentState.LOADING and any(m.state == "downloading" for m in models):
            state = AgentState.DOWNLOADING
        return WorkerStatus(
            worker_id=response.worker_id,
            ready_models=tuple(m.model for m in models if m.state == "ready"),
            known_models=tuple(m.model for m in models),
            healthy=response.state != pb.WORKER_STATE_DEGRADED,
            models=models,
            state=state,
            memory_total=response.memory_total_bytes,
            memory_free=response.memory_free_bytes,
            memory_source=response.memory_source or "configured",
            queue_depth=response.queue_depth,
            role=_ROLES.get(response.role, WorkerRole.BOTH),
            stored={
                s.model: _CACHE_LEVELS.get(s.tier, CacheLevel.REMOTE)
                for s in response.stored_models
                if s.model
            },
            served={
                m.model: ServedTotals(
                    requests=m.requests_total,
                    prompt_tokens=m.prompt_tokens_total,
                    completion_tokens=m.completion_tokens_total,
                    last_request_unix_ms=m.last_request_unix_ms,
                )
                for m in response.models
            },
            key_tokens={k.key_fingerprint: k.tokens_total for k in response.key_tokens},
            rest_port=response.rest_port if 0 < response.rest_port < 65536 else 0,
            rest_socket=_socket_path(response.rest_socket),
        )

    async def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        deadline_at = _deadline_at(deadline_s)
        call = self._stub.LoadModel(
            pb.LoadModelRequest(model=model, local_path=local_path), timeout=deadline_s
        )
        try:
            async for response in call:
                state = _MODEL_STATES.get(response.state, "failed")
                if state == "failed":
                    raise UnavailableError(
                        f"worker {self.address} failed to load {model}: {response.message}"
                    )
                yield state
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, deadline_at) from error
        finally:
            call.cancel()

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        try:
            response = await self._stub.UnloadModel(
                pb.UnloadModelRequest(
                    model=model, drain_timeout_seconds=drain_s, keep_asleep=keep_asleep
                ),
                timeout=drain_s + 10,
            )
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error, None) from error
        return response.aborted_requests

    async def disconnected(self) -> None:
        # The channel's connectivity, watched by grpc's core (no polling): a worker's
        # process that ends closes its sockets, and the channel leaves READY at once.
        state = self._channel.get_state(try_to_connect=False)
        while state is not grpc.ChannelConnectivity.READY:
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=False)
        await self._channel.wait_for_state_change(state)

    async def close(self) -> None:
        await self._channel.close(grace=None)


class GrpcEstimatorClient:
    """The estimator service's EstimateMemory for one replica (batch 1, default length)."""

    def __init__(self, address: str, deadline_s: float = 10.0) -> None:
        self._channel = create_channel(address)
        self._stub = estimator_pb2_grpc.EstimatorServiceStub(self._channel)
        self._deadline_s = deadline_s

    async def estimate(self, model_id: str) -> int:
        try:
            response = await self._stub.EstimateMemory(
                estimator_pb2.EstimateMemoryRequest(model_id=model_id, batch_size=1),
                timeout=self._deadline_s,
            )
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
        if response.total_bytes <= 0:
            raise UnavailableError("the estimator answered no total_bytes")
        return int(response.total_bytes)

    async def close(self) -> None:
        await self._channel.close(grace=None)
