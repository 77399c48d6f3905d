"""RegistryClient over gRPC: the proxy's protobuf edge to the RegistryService."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc

from proxy.registry import PrefetchHint, RegistryModel
from runtime.channels import create_channel
from runtime.errors import HeliosError
from runtime.grpc_errors import error_from_rpc

__all__ = ["GrpcRegistryClient"]

_PAGE_SIZE = 200
_MAX_PAGES = 1000  # 200k models: a listing that never ends is the registry's bug


def _error(error: grpc.aio.AioRpcError) -> HeliosError:
    return error_from_rpc(error)


class GrpcRegistryClient:
    """The RegistryService calls the proxy makes."""

    def __init__(self, address: str, deadline_s: float = 5.0) -> None:
        self.address = address
        self._channel = create_channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._deadline_s = deadline_s

    async def list_models(self) -> list[RegistryModel]:
        models: list[RegistryModel] = []
        token = ""
        try:
            for _ in range(_MAX_PAGES):
                page = await self._stub.ListModels(
                    pb.RegistryServiceListModelsRequest(page_size=_PAGE_SIZE, page_token=token),
                    timeout=self._deadline_s,
                )
                sizes, bases = list(page.total_bytes), list(page.bases)
                for i, v in enumerate(page.versions):
                    size = sizes[i] if i < len(sizes) else 0
                    base = bases[i] if i < len(bases) else ""
                    models.append(RegistryModel(v.model_id, v.version, size, base))
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return models

    async def resolve(self, reference: str) -> RegistryModel:
        try:
            r = await self._stub.ResolveModel(
                pb.ResolveModelRequest(reference=reference), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return RegistryModel(r.version.model_id, r.version.version, r.total_bytes, r.base)

    async def record_usage(self, model_id: str, requests: int, tokens: int) -> None:
        try:
            await self._stub.RecordUsage(
                pb.RecordUsageRequest(model_id=model_id, requests=requests, tokens=tokens),
                timeout=self._deadline_s,
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error

    async def prefetch_hints(self, limit: int) -> list[PrefetchHint]:
        try:
            r = await self._stub.GetPrefetchHints(
                pb.GetPrefetchHintsRequest(limit=limit), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return [
            PrefetchHint(h.model_id, h.size_bytes, h.predicted_requests_per_hour) for h in r.hints
        ]

    async def eviction_candidates(self, bytes_needed: int, loaded: Sequence[str]) -> list[str]:
        try:
            r = await self._stub.GetEvictionCandidates(
                pb.GetEvictionCandidatesRequest(
                    bytes_needed=bytes_needed, loaded_model_ids=list(loaded)
                ),
                timeout=self._deadline_s,
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error) from error
        return list(r.model_ids)

    async def close(self) -> None:
        await self._channel.close(grace=None)
