"""The worker's side of storaged: EnsureModel makes a model version local and streams
progress. A gRPC adapter: progress becomes domain :class:`DownloadProgress`, gRPC
failures become domain errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from helios.v1 import storage_pb2, storage_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import (
    FailedPreconditionError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

_STATUS_ERRORS: dict[grpc.StatusCode, type[HeliosError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


@dataclass(frozen=True)
class DownloadProgress:
    """One EnsureModel progress report; ``local_dir`` is set on the last one."""

    bytes_done: int
    bytes_total: int
    local_dir: str = ""

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0


class StorageClient:
    """EnsureModel on the storaged at ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = create_channel(address)
        self._stub = storage_pb2_grpc.StorageServiceStub(self._channel)

    async def ensure_model(self, model: str, version: str) -> AsyncIterator[DownloadProgress]:
        try:
            async for msg in self._stub.EnsureModel(
                storage_pb2.EnsureModelRequest(model_id=model, version=version)
            ):
                yield DownloadProgress(msg.bytes_done, msg.bytes_total, msg.local_dir)
        except grpc.aio.AioRpcError as exc:
            error = _STATUS_ERRORS.get(exc.code(), UnavailableError)
            raise error(
                f"storaged {self.address} EnsureModel({model}@{version or 'latest'}) failed:"
                f" {exc.code().name}: {exc.details()}"
            ) from exc

    async def close(self) -> None:
        await self._channel.close(None)
