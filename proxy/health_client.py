"""gRPC health checks of the proxy's dependencies (proxy/dependencies.py's probes)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.channels import create_channel


class GrpcHealthProbe:
    """``grpc.health.v1.Health/Check`` of a server's overall status ("" service) on one
    long-lived channel (it reconnects by itself when the server comes back)."""

    def __init__(self, address: str) -> None:
        self._channel = create_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    async def __call__(self, timeout_s: float) -> bool:
        try:
            reply = await self._stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False  # unreachable, draining or too slow: down, as the monitor records
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close(None)
