"""gRPC health watches of the proxy's dependencies (proxy/dependencies.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.channels import create_channel

# Between attempts to open the watch again while the server does not answer.
RETRY_S = 0.5


class GrpcHealthWatch:
    """``grpc.health.v1.Health/Watch`` of a server's overall status ("" service) on one
    long-lived channel (it reconnects by itself when the server comes back): the stream
    breaks the moment the server's process dies, so "down" is known at once."""

    def __init__(self, address: str, *, retry_s: float = RETRY_S) -> None:
        self._channel = create_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._retry_s = retry_s

    async def __call__(self, report: Callable[[bool], None]) -> None:
        """Report each state the server announces, and down whenever it is unreachable;
        until cancelled."""
        while True:
            try:
                async for reply in self._stub.Watch(health_pb2.HealthCheckRequest()):
                    report(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                pass  # unreachable, or the stream broke: reported down just below
            report(False)
            await asyncio.sleep(self._retry_s)

    async def close(self) -> None:
        await self._channel.close(None)
