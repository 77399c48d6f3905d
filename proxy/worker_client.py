"""WorkerConnection over gRPC: the proxy's outbound protobuf edge."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc

from proxy.openai import Job
from proxy.service import Step, WorkerStatus
from runtime.channels import create_channel
from runtime.errors import HeliosError, UnavailableError, error_from_status

_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
}


def job_to_pb(job: Job) -> pb.GenerateRequest:
    s = job.sampling
    request = pb.GenerateRequest(
        request_id=job.request_id,
        model=job.model,
        sampling=pb.SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
        ),
    )
    if job.messages is not None:
        request.chat.messages.extend(
            pb.PromptMessage(role=role, content=content) for role, content in job.messages
        )
    else:
        request.prompt = job.prompt or ""
    return request


def _relay_error(address: str, error: grpc.aio.AioRpcError) -> HeliosError:
    """Keep the worker's meaning for client mistakes; anything else is the worker's
    failure (UNAVAILABLE), named so operators can find it."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return UnavailableError(f"worker {address} failed: {error.details() or code.name}")
    return error_from_status(code, error.details() or code.name)


class GrpcWorkerConnection:
    """Talks to one worker's WorkerService."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = create_channel(address)
        self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)

    async def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]:
        call = self._stub.Generate(job_to_pb(job), timeout=deadline_s)
        try:
            async for response in call:
                if response.finish_reason == pb.FINISH_REASON_ABORT:
                    raise UnavailableError(f"worker {self.address} aborted the generation")
                yield Step(
                    text=response.text,
                    prompt_tokens=response.prompt_tokens,
                    completion_tokens=response.completion_tokens,
                    finish_reason=_FINISH_REASONS.get(response.finish_reason),
                )
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error) from error
        finally:
            # Closed early (client gone, error): cancel the RPC so the worker stops.
            call.cancel()

    async def heartbeat(self, deadline_s: float) -> WorkerStatus:
        try:
            response = await self._stub.Heartbeat(pb.HeartbeatRequest(), timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            raise _relay_error(self.address, error) from error
        return WorkerStatus(
            worker_id=response.worker_id,
            ready_models=tuple(m.model for m in response.models if m.state == pb.MODEL_STATE_READY),
            known_models=tuple(m.model for m in response.models),
            healthy=response.state != pb.WORKER_STATE_DEGRADED,
        )

    async def close(self) -> None:
        await self._channel.close(grace=None)
