"""A decode-role worker's calls to its prefill peers: WorkerService.Prefill over gRPC.
A gRPC adapter: jobs go out as GenerateRequests (worker_api.wire), answers come back as
domain PrefillResults and failed calls as domain errors, with their status kept (a
peer's INVALID_ARGUMENT stays the client's mistake; INTERNAL, UNKNOWN and the like
become UNAVAILABLE: the peer failed)."""

from __future__ import annotations

import grpc
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc

from openai_compat.params import Job
from runtime.channels import create_channel
from runtime.grpc_errors import error_from_status
from worker_api.disagg import PrefillResult
from worker_api.wire import job_to_pb, prefill_result_from_pb


class PrefillClient:
    """Calls Prefill on prefill workers; keeps one channel per peer."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = create_channel(address)
            self._channels[address] = channel
        return worker_pb2_grpc.WorkerServiceStub(channel)

    async def prefill(self, address: str, job: Job, deadline_s: float | None) -> PrefillResult:
        """Prefill ``job`` on the worker at ``address``; cancelling this cancels the call
        (the peer stops computing)."""
        try:
            response = await self._stub(address).Prefill(
                pb.PrefillRequest(request=job_to_pb(job)), timeout=deadline_s
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(
                exc.code(), f"prefill worker {address}: {exc.code().name}: {exc.details()}"
            ) from exc
        return prefill_result_from_pb(response, address)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
