"""StorageService servicer: protobuf <-> :class:`storaged.cache.ModelCache`, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from helios.v1 import storage_pb2 as pb
from helios.v1 import storage_pb2_grpc

from runtime.errors import InvalidArgumentError
from runtime.model_ids import is_sha256
from runtime.tracing import annotate
from storaged.cache import ModelCache, Progress
from storaged.tiers import Tier

_TIERS = {
    None: pb.CACHE_TIER_UNSPECIFIED,
    Tier.RAM: pb.CACHE_TIER_RAM,
    Tier.NVME: pb.CACHE_TIER_NVME,
    Tier.SSD: pb.CACHE_TIER_SSD,
    Tier.REMOTE: pb.CACHE_TIER_REMOTE,
}

MAX_READ_CHUNK = 64 << 20


def _progress_to_pb(p: Progress) -> pb.EnsureModelResponse:
    return pb.EnsureModelResponse(
        bytes_done=p.bytes_done,
        bytes_total=p.bytes_total,
        files_done=p.files_done,
        files_total=p.files_total,
        tier=_TIERS[p.tier],
        bytes_per_second=p.bytes_per_second,
        local_dir=p.local_dir,
    )


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    async def EnsureModel(
        self, request: pb.EnsureModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EnsureModelResponse]:
        copied = False  # whether any file had to be fetched or copied (not a cache hit)
        async for p in self.cache.ensure(request.model_id, request.version):
            if p.local_dir:
                annotate(
                    {
                        "helios.model": request.model_id,
                        "helios.storage.tier": p.tier.name.lower(),
                        "helios.storage.cache_hit": not copied,
                    }
                )
            copied = True
            yield _progress_to_pb(p)

    async def Prefetch(
        self, request: pb.PrefetchRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefetchResponse:
        return pb.PrefetchResponse(
            started=await self.cache.prefetch(request.model_id, request.version)
        )

    async def Evict(
        self, request: pb.EvictRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvictResponse:
        if not request.model_id:
            raise InvalidArgumentError("model_id: must not be empty")
        return pb.EvictResponse(freed_bytes=await self.cache.evict(request.model_id))

    async def Pin(
        self, request: pb.PinRequest, context: grpc.aio.ServicerContext
    ) -> pb.PinResponse:
        self.cache.pin(request.model_id)
        return pb.PinResponse()

    async def Unpin(
        self, request: pb.UnpinRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnpinResponse:
        if not request.model_id:
            raise InvalidArgumentError("model_id: must not be empty")
        self.cache.unpin(request.model_id)
        return pb.UnpinResponse()

    async def Stat(
        self, request: pb.StatRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatResponse:
        if not request.model_id:
            raise InvalidArgumentError("model_id: must not be empty")
        model_id, version = await self.cache.resolve_local(request.model_id, request.version)
        v, where = self.cache.stat(model_id, version)
        local_dir = str(self.cache.version_dir(v.tier, v.model_id, v.version)) if v.tier else ""
        return pb.StatResponse(
            tier=_TIERS[v.tier],
            local_dir=local_dir,
            pinned=v.model_id in self.cache.pins,
            version=v.version,
            size_bytes=v.size,
            files=[
                pb.CachedFile(
                    path=f.path,
                    sha256=f.sha256,
                    size_bytes=f.size,
                    tier=_TIERS[where.get(f.sha256)],
                )
                for f in v.files
            ],
        )

    async def ReadChunk(
        self, request: pb.ReadChunkRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadChunkResponse]:
        if not is_sha256(request.sha256):
            raise InvalidArgumentError("sha256: must be 64 lowercase hex digits")
        if request.offset < 0 or request.length < 0:
            raise InvalidArgumentError("offset and length must be >= 0")
        async for offset, data in self.cache.read_blob(
            request.sha256, request.offset, request.length
        ):
            yield pb.ReadChunkResponse(data=data, offset=offset)

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        c = self.cache
        models = sorted(c.versions.values(), key=lambda v: v.last_access, reverse=True)
        return pb.GetStatsResponse(
            tiers=[
                pb.TierStats(
                    tier=_TIERS[t.config.tier],
                    used_bytes=t.used,
                    capacity_bytes=t.config.capacity_bytes,
                    hits=t.hits,
                    evictions=t.evictions,
                    path=str(t.config.path),
                    files=len(t.blobs),
                    demotions=t.demotions,
                )
                for t in c.tiers
            ],
            models=[
                pb.CachedModel(
                    model_id=v.model_id,
                    version=v.version,
                    tier=_TIERS[v.tier],
                    size_bytes=v.size,
                    pinned=v.model_id in c.pins,
                    local_dir=str(c.version_dir(v.tier, v.model_id, v.version)) if v.tier else "",
                    last_access_unix=v.last_access,
                )
                for v in models
            ],
            hit_rate=c.hit_rate,
            downloaded_bytes=c.downloader.bytes_downloaded,
            download_bytes_per_second=c.last_rate,
        )
