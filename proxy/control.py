"""The proxy as a whole: Envoy's control plane plus the cold path, wired together.

:class:`ControlPlane` owns the parts and their loops; each part is its own module:

- fleet state: :mod:`proxy.fleet` (agents, models, memory) kept current by
  :mod:`proxy.heartbeats` (discovery, a heartbeat loop per agent);
- what Envoy is told: :mod:`proxy.xds_snapshot` and :mod:`proxy.xds_server` (they
  observe the fleet; wired in ``proxy.server``);
- placement and cold starts: :mod:`proxy.cold_start`;
- warm pools, scale to zero, prefetch, admin actions: :mod:`proxy.warm_pools`;
- the requests that reach the proxy: :mod:`proxy.cold_path`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from proxy.activity import Activity
from proxy.cold_path import ColdPath
from proxy.cold_start import (
    DEFAULT_DRAIN_S,
    DEFAULT_LOAD_TIMEOUT_S,
    ColdStarts,
    ModelSpec,
    PoolScaler,
)
from proxy.discovery import DiscoverySource
from proxy.estimate import MemoryEstimator
from proxy.fleet import WorkerConnection, WorkerPool
from proxy.heartbeats import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_HEARTBEAT_TIMEOUT_S, Heartbeats
from proxy.limits import Admission, ApiKeys
from proxy.registry import RegistryCatalogue, UsageReporter
from proxy.warm_pools import DEFAULT_RECONCILE_INTERVAL_S, WarmPools


@dataclass
class ControlPlane:
    """The parts of a running proxy (see the module's docstring)."""

    pool: WorkerPool
    heartbeats: Heartbeats
    cold: ColdStarts
    warm: WarmPools
    serving: ColdPath
    usage: UsageReporter | None = None

    @classmethod
    def create(
        cls,
        pool: WorkerPool,
        connect: Callable[[str], WorkerConnection],
        catalogue: Iterable[ModelSpec] = (),
        estimator: MemoryEstimator | None = None,
        *,
        discovery: DiscoverySource | None = None,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        reconcile_interval_s: float = DEFAULT_RECONCILE_INTERVAL_S,
        registry: RegistryCatalogue | None = None,
        usage: UsageReporter | None = None,
        scaler: PoolScaler | None = None,
        api_keys: ApiKeys | None = None,
        admission: Admission | None = None,
        idle_ttl_s: float = 0.0,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        drain_s: float = DEFAULT_DRAIN_S,
        prefetch: int = 0,
        target_concurrency: int = 0,
    ) -> ControlPlane:
        activity = Activity()
        heartbeats = Heartbeats(
            pool,
            connect,
            discovery=discovery,
            activity=activity,
            interval_s=heartbeat_interval_s,
            timeout_s=heartbeat_timeout_s,
            usage=usage,
            registry=registry,
            api_keys=api_keys,
        )
        cold = ColdStarts(
            pool,
            heartbeats.connections,
            catalogue,
            estimator or MemoryEstimator(),
            activity=activity,
            refresh=heartbeats.beat,
            load_timeout_s=load_timeout_s,
            drain_s=drain_s,
            registry=registry,
            scaler=scaler,
        )
        warm = WarmPools(
            cold,
            idle_ttl_s=idle_ttl_s,
            target_concurrency=target_concurrency,
            prefetch=prefetch,
            interval_s=reconcile_interval_s,
        )
        serving = ColdPath(
            cold, heartbeats.connections, api_keys=api_keys, admission=admission, usage=usage
        )
        return cls(pool, heartbeats, cold, warm, serving, usage)

    async def refresh(self) -> None:
        """Discover and ask every agent for a heartbeat now."""
        await self.heartbeats.refresh()

    def start(self) -> None:
        """Start the heartbeat, warm-pool and usage loops (inside the running loop)."""
        self.heartbeats.start()
        self.warm.start()
        if self.usage is not None:
            self.usage.start()

    async def stop(self) -> None:
        await self.warm.stop()
        if self.usage is not None:
            await self.usage.stop()
        await self.heartbeats.stop()
        registry = self.cold.registry
        if registry is not None:
            await registry.client.close()
