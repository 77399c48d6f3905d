"""RegistryService servicer: protobuf <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc

from registry.core import Registry
from registry.import_progress import ImportProgress
from registry.upload import UploadChunk, UploadFile, UploadHeader
from runtime.errors import InvalidArgumentError
from runtime.paths import PathRoots


def _version(model_id: str, version: str) -> pb.ModelVersion:
    return pb.ModelVersion(model_id=model_id, version=version)


def _progress_to_pb(p: ImportProgress) -> pb.ImportModelResponse:
    out = pb.ImportModelResponse(
        file=p.file,
        bytes_done=p.bytes_done,
        bytes_total=p.bytes_total,
        files_done=p.files_done,
        files_total=p.files_total,
        file_bytes_done=p.file_bytes_done,
        file_bytes_total=p.file_bytes_total,
        reused_bytes=p.reused_bytes,
    )
    if p.version is not None:
        out.version.CopyFrom(_version(*p.version))
    return out


def _require_version(v: pb.ModelVersion) -> tuple[str, str]:
    if not v.model_id:
        raise InvalidArgumentError("version.model_id: must not be empty")
    return v.model_id, v.version


async def _upload_chunks(
    requests: AsyncIterator[pb.UploadModelRequest],
) -> AsyncIterator[UploadChunk]:
    async for request in requests:
        if not request.HasField("chunk"):
            raise InvalidArgumentError("UploadModel: only the first message carries the header")
        yield UploadChunk(request.chunk.path, request.chunk.offset, request.chunk.data)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, *, import_roots: PathRoots | None = None) -> None:
        """``import_roots``: the directories ImportModel may read (none by default)."""
        self.registry = registry
        self.import_roots = import_roots if import_roots is not None else PathRoots()

    async def ResolveModel(
        self, request: pb.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveModelResponse:
        row = await self.registry.resolve(request.reference)
        return pb.ResolveModelResponse(
            version=_version(row.model_id, row.version), total_bytes=row.total_bytes, base=row.base
        )

    async def GetManifest(
        self, request: pb.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetManifestResponse:
        manifest = await self.registry.manifest(*_require_version(request.version))
        return pb.GetManifestResponse(
            version=_version(manifest.model_id, manifest.version),
            files=[
                pb.ManifestFile(
                    path=f.path,
                    size_bytes=f.size,
                    sha256=f.sha256,
                    chunk_size_bytes=f.chunk_size,
                    chunk_sha256=f.chunk_sha256,
                )
                for f in manifest.files
            ],
            total_bytes=manifest.total_bytes,
            source=manifest.source,
        )

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConfigResponse:
        model_id, version = _require_version(request.version)
        cached = self.registry.config_cached(model_id, version)  # the fast path: exact ids
        if cached is None:
            cached = await self.registry.config(model_id, version)
        return pb.GetConfigResponse(config_json=cached)

    async def ListModels(
        self, request: pb.RegistryServiceListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegistryServiceListModelsResponse:
        rows, token = self.registry.list_models(request.page_size, request.page_token)
        return pb.RegistryServiceListModelsResponse(
            versions=[_version(r.model_id, r.version) for r in rows],
            next_page_token=token,
            total_bytes=[r.total_bytes for r in rows],
            bases=[r.base for r in rows],
        )

    async def ImportModel(
        self, request: pb.ImportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ImportModelResponse]:
        set_latest = request.set_latest if request.HasField("set_latest") else True
        async for progress in self.registry.import_source(
            request.source,
            request.model_id,
            list(request.allow_patterns),
            list(request.deny_patterns),
            set_latest,
            roots=self.import_roots,
            base=request.base,
        ):
            message = _progress_to_pb(progress)
            if progress.version is not None:
                message.base = await self._base_of(*progress.version)
            yield message

    async def UploadModel(
        self,
        request_iterator: AsyncIterator[pb.UploadModelRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadModelResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgumentError("UploadModel: the first message must carry the header")
        h = first.header
        header = UploadHeader(
            model_id=h.model_id,
            files=tuple(UploadFile(f.path, f.size_bytes, f.sha256) for f in h.files),
            set_latest=h.set_latest if h.HasField("set_latest") else True,
            base=h.base,
        )
        result = await self.registry.upload(header, _upload_chunks(requests))
        return pb.UploadModelResponse(
            version=_version(result.model_id, result.version),
            total_bytes=result.total_bytes,
            reused_bytes=result.reused_bytes,
            base=await self._base_of(result.model_id, result.version),
        )

    async def _base_of(self, model_id: str, version: str) -> str:
        """The base of an imported version (a LoRA adapter's; "" for a model)."""
        return (await self.registry.resolve(f"{model_id}@{version}")).base

    async def SetAlias(
        self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAliasResponse:
        model_id, version = _require_version(request.version)
        previous = await self.registry.set_alias(request.alias, model_id, version)
        response = pb.SetAliasResponse()
        if previous:
            response.previous.CopyFrom(_version(model_id.lower(), previous))
        return response

    async def DeleteVersion(
        self, request: pb.DeleteVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteVersionResponse:
        freed = await self.registry.delete_version(*_require_version(request.version))
        return pb.DeleteVersionResponse(freed_bytes=freed)

    async def RecordUsage(
        self, request: pb.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordUsageResponse:
        await self.registry.record_usage(request.model_id, request.requests, request.tokens)
        return pb.RecordUsageResponse()

    async def GetPrefetchHints(
        self, request: pb.GetPrefetchHintsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPrefetchHintsResponse:
        hints = self.registry.prefetch_hints(request.limit)
        return pb.GetPrefetchHintsResponse(
            hints=[
                pb.PrefetchHint(
                    model_id=p.model_id,
                    score=p.requests_per_hour,
                    version=_version(row.model_id, row.version),
                    size_bytes=row.total_bytes,
                    predicted_requests_per_hour=p.requests_per_hour,
                )
                for p, row in hints
            ]
        )

    async def GetEvictionCandidates(
        self, request: pb.GetEvictionCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEvictionCandidatesResponse:
        candidates = self.registry.eviction_candidates(
            request.bytes_needed, list(request.loaded_model_ids)
        )
        return pb.GetEvictionCandidatesResponse(
            model_ids=[c.model_id for c in candidates],
            candidates=[
                pb.EvictionCandidate(
                    model_id=c.model_id, size_bytes=c.size_bytes, score=c.value, priority=c.priority
                )
                for c in candidates
            ],
            bytes_freed=sum(c.size_bytes for c in candidates),
        )

    async def ReadBlob(
        self, request: pb.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadBlobResponse]:
        first = True
        async for offset, size, data in self.registry.read_blob(
            request.sha256, request.offset, request.length
        ):
            yield pb.ReadBlobResponse(data=data, offset=offset, size_bytes=size if first else 0)
            first = False

    async def SetModelPolicy(
        self, request: pb.SetModelPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetModelPolicyResponse:
        await self.registry.set_policy(request.model_id, request.priority, request.pinned)
        return pb.SetModelPolicyResponse()
