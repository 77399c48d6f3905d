"""The registry as the estimator reads it, over gRPC (the estimator's protobuf edge)."""

from __future__ import annotations

import grpc
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import HeliosError
from runtime.grpc_errors import error_from_rpc

__all__ = ["GrpcRegistryConfigs"]


def _error(error: grpc.aio.AioRpcError) -> HeliosError:
    return error_from_rpc(error)


class GrpcRegistryConfigs:
    """ResolveModel and GetConfig of a RegistryService."""

    def __init__(self, address: str, deadline_s: float = 5.0) -> None:
        self._channel = create_channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._deadline_s = deadline_s

    async def resolve(self, reference: str) -> tuple[str, str]:
        try:
            response = await self._stub.ResolveModel(
                pb.ResolveModelRequest(reference=reference), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return response.version.model_id, response.version.version

    async def config_json(self, model_id: str, version: str) -> bytes:
        try:
            response = await self._stub.GetConfig(
                pb.GetConfigRequest(version=pb.ModelVersion(model_id=model_id, version=version)),
                timeout=self._deadline_s,
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return response.config_json.encode()

    async def close(self) -> None:
        await self._channel.close(grace=None)
