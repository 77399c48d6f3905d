"""Gathers :class:`proxy.status.MeshStatus`: the pool's view, a Heartbeat probe of every
worker for its cumulative counters (a probe without prefill pools changes nothing on the
worker), storaged's tiers, the recent errors. Each ask is bounded by a short deadline: a
worker or storaged that does not answer in time is left out of this answer."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc
from helios.v1 import storage_pb2, storage_pb2_grpc, worker_pb2, worker_pb2_grpc

from proxy.dependencies import DependencyMonitor, mesh_health
from proxy.fleet import WorkerPool
from proxy.status import (
    MeshStatus,
    ModelCounters,
    RecentErrors,
    ThroughputMeter,
    TierFigures,
    summarize_models,
    summarize_workers,
)
from runtime.channels import create_channel

logger = logging.getLogger(__name__)

PROBE_DEADLINE_S = 0.5
_TIERS = {
    storage_pb2.CACHE_TIER_RAM: "ram",
    storage_pb2.CACHE_TIER_NVME: "nvme",
    storage_pb2.CACHE_TIER_SSD: "ssd",
    storage_pb2.CACHE_TIER_REMOTE: "remote",
}

# The model ids the mesh knows beside what the workers hold (catalogue, registry).
KnownModels = Callable[[], Awaitable[Iterable[str]]]


def _version() -> str:
    try:
        return importlib.metadata.version("helios")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


class StatusReporter:
    """Answers GetStatus; keeps a channel per worker it probes and one to storaged."""

    def __init__(
        self,
        pool: WorkerPool,
        known_models: KnownModels,
        *,
        dependencies: DependencyMonitor | None = None,
        storaged: str = "",
        errors: RecentErrors | None = None,
    ) -> None:
        self._pool = pool
        self._known_models = known_models
        self._dependencies = dependencies
        self._storaged = storaged
        self._errors = errors or RecentErrors()
        self._meter = ThroughputMeter()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = create_channel(address)
        return channel

    async def _probe(self, address: str) -> dict[tuple[str, str], ModelCounters]:
        stub = worker_pb2_grpc.WorkerServiceStub(self._channel(address))
        try:
            beat = await stub.Heartbeat(worker_pb2.HeartbeatRequest(), timeout=PROBE_DEADLINE_S)
        except grpc.aio.AioRpcError:
            return {}  # the heartbeats say what is wrong with it (recent errors)
        return {
            (address, m.model): ModelCounters(
                requests=m.requests_total,
                completion_tokens=m.completion_tokens_total,
                first_tokens=m.first_tokens_total,
                first_token_seconds=m.time_to_first_token_seconds_total,
            )
            for m in beat.models
        }

    async def _tiers(self) -> tuple[TierFigures, ...]:
        if not self._storaged:
            return ()
        stub = storage_pb2_grpc.StorageServiceStub(self._channel(self._storaged))
        try:
            stats = await stub.GetStats(storage_pb2.GetStatsRequest(), timeout=PROBE_DEADLINE_S)
        except grpc.aio.AioRpcError:
            return ()
        return tuple(
            TierFigures(
                tier=_TIERS.get(t.tier, "unknown"),
                used_bytes=t.used_bytes,
                capacity_bytes=t.capacity_bytes,
                files=t.files,
                hits=t.hits,
            )
            for t in stats.tiers
        )

    async def status(self) -> MeshStatus:
        agents = self._pool.agents()
        gone = set(self._channels) - {a.address for a in agents} - {self._storaged}
        for address in gone:  # workers that left the fleet
            await self._channels.pop(address).close(None)
        probes = await asyncio.gather(*(self._probe(a.address) for a in agents))
        tiers, known = await asyncio.gather(self._tiers(), self._known_models())
        counters = {key: value for probe in probes for key, value in probe.items()}
        self._meter.add(time.monotonic(), counters)
        rates = self._meter.rates()
        tokens, ttft = rates.get("", (0.0, 0.0))
        return MeshStatus(
            status=mesh_health(self._pool, self._dependencies).status,
            version=VERSION,
            models=summarize_models(agents, known, rates),
            workers=summarize_workers(agents),
            tiers=tiers,
            tokens_per_second=tokens,
            time_to_first_token_s=ttft,
            requests_total=sum(c.requests for c in counters.values()),
            errors=self._errors.latest(),
        )

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
