"""The worker's side of storaged: EnsureModel makes a model version local and streams
progress; GetStats says which models the node already holds, and in which tier. A gRPC
adapter: progress becomes domain :class:`DownloadProgress`, gRPC failures become domain
errors. :class:`StoredModels` keeps GetStats' answer for heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from helios.v1 import storage_pb2, storage_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import ErrorCode, HeliosError, UnavailableError
from runtime.grpc_errors import relayed_error

logger = logging.getLogger(__name__)

# storaged's tiers by name, fastest first (a model's "tier" is the fastest holding it).
TIER_ORDER = ("ram", "nvme", "ssd", "remote")
_TIER_NAMES = {
    storage_pb2.CACHE_TIER_RAM: "ram",
    storage_pb2.CACHE_TIER_NVME: "nvme",
    storage_pb2.CACHE_TIER_SSD: "ssd",
    storage_pb2.CACHE_TIER_REMOTE: "remote",
}

# storaged's answers about the request keep their meaning; any other code is storaged
# failing (UnavailableError).
_KEPT_CODES = frozenset(
    {
        ErrorCode.NOT_FOUND,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.FAILED_PRECONDITION,
        ErrorCode.RESOURCE_EXHAUSTED,
    }
)


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
            call = f"storaged {self.address} EnsureModel({model}@{version or 'latest'})"
            raise relayed_error(exc, call, _KEPT_CODES) from exc

    async def cached_models(self, timeout_s: float) -> list[tuple[str, str]]:
        """(model id, tier name) of every version the node holds (GetStats), within
        ``timeout_s``; versions held in no tier are left out."""
        try:
            stats = await self._stub.GetStats(storage_pb2.GetStatsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"storaged {self.address} GetStats failed: {exc.code().name}: {exc.details()}"
            ) from exc
        return [(m.model_id, _TIER_NAMES[m.tier]) for m in stats.models if m.tier in _TIER_NAMES]

    async def close(self) -> None:
        await self._channel.close(None)


def fastest_tiers(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """model id -> the fastest tier among its versions' (:data:`TIER_ORDER`)."""
    rank = {name: i for i, name in enumerate(TIER_ORDER)}
    best: dict[str, str] = {}
    for model, tier in entries:
        if tier in rank and (model not in best or rank[tier] < rank[best[model]]):
            best[model] = tier
    return best


class StoredModels:
    """What the node's storaged holds (model id -> fastest tier), for heartbeats.

    Heartbeats come every 0.2-2 s from every proxy: storaged is asked at most once per
    ``ttl_s`` (concurrent heartbeats share one call), each call bounded by
    ``timeout_s``. A heartbeat never fails because of storaged: when it is slow or down
    the last answer is reported, for up to ``stale_after_s``, then nothing. The first
    failure after a success is logged as a warning, the repeats at debug."""

    def __init__(
        self,
        fetch: Callable[[float], Awaitable[Iterable[tuple[str, str]]]],
        *,
        ttl_s: float = 1.5,
        # Well under the proxy's heartbeat deadline (0.5 s): a slow or restarting storaged
        # must not make every worker of a node miss its heartbeat at once (then the proxy
        # takes them all out of routing: seen in the soak after a storaged restart).
        timeout_s: float = 0.2,
        stale_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._known: dict[str, str] = {}
        self._known_at: float | None = None  # when storaged last answered
        self._asked_at: float | None = None  # when it was last asked (answer or not)
        self._failing = False
        self._lock = asyncio.Lock()

    async def current(self) -> Mapping[str, str]:
        async with self._lock:
            now = self._clock()
            if self._asked_at is None or now - self._asked_at >= self._ttl_s:
                self._asked_at = now
                await self._refresh()
            if self._known_at is None or self._clock() - self._known_at > self._stale_after_s:
                return {}
            return dict(self._known)

    async def _refresh(self) -> None:
        try:
            entries = await asyncio.wait_for(self._fetch(self._timeout_s), self._timeout_s)
        except (HeliosError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, HeliosError) else "timed out"
            log = logger.debug if self._failing else logger.warning
            log(
                "storaged stats unavailable; heartbeats report the last known models",
                extra={"error": reason, "known_models": len(self._known)},
            )
            self._failing = True
            return
        self._known = fastest_tiers(entries)
        self._known_at = self._clock()
        if self._failing:
            logger.info("storaged stats available again", extra={"models": len(self._known)})
        self._failing = False
