"""Warm pools: keeping models warm, scaling them, unloading idle ones, prefetching.

Domain only; loads and unloads go through :class:`proxy.cold_start.ColdStarts`.

Every ``reconcile()`` (a loop of its own, every ``interval_s``, never in the way of the
heartbeats) brings each catalogue model up to its ``min_replicas`` where memory allows
(preload) and unloads replicas idle longer than ``idle_ttl_s`` down to ``min_replicas``
(0: scale to zero). A replica's idle clock restarts with each request the proxy relays
to it and with each request its heartbeat says it served itself (Envoy sends warm
requests to workers directly). Under load it scales up: when a model's demand (its
requests in flight through this proxy, or the running plus waiting requests its
replicas' heartbeats report, whichever is larger) exceeds ``target_concurrency`` per
READY replica, one more replica is loaded where it fits in free memory (never by
evicting), up to ``max_replicas``; one such load per model at a time, in the background.
Models outside the catalogue (loaded by a worker's own flags) are never unloaded for
idleness: the proxy could not load them back. Models whose workers are a pool of their
own scale as a whole: to zero when every replica has been idle past the TTL (and the
catalogue asks for no warm replica).

With ``prefetch`` > 0, each pass preloads at most one of the registry's prefetch hints
into memory that is free without evicting anything. The admin actions (preload, scale,
evict) take the same lock as a pass: one change at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy import metrics
from proxy.cold_start import ColdStarts
from proxy.fleet import WorkerView
from proxy.placement import NoFit, best_fit
from runtime.errors import HeliosError, InvalidArgumentError, NotFoundError, UnavailableError
from runtime.tasks import BackgroundTask

logger = logging.getLogger(__name__)

DEFAULT_RECONCILE_INTERVAL_S = 1.0
# A replica whose agent missed heartbeats still counts towards its model's warm
# replicas this long after its last good one: a busy worker that answered one heartbeat
# late is out of routing at once, but no second replica is loaded in its place for it.
REPLICA_GRACE_S = 5.0


def _counted(agent: WorkerView) -> bool:
    return agent.healthy or time.time() - agent.last_heartbeat < REPLICA_GRACE_S


class WarmPools:
    """The warm-pool upkeep and the admin actions over a :class:`ColdStarts`."""

    def __init__(
        self,
        cold: ColdStarts,
        *,
        idle_ttl_s: float = 0.0,
        target_concurrency: int = 0,
        prefetch: int = 0,
        interval_s: float = DEFAULT_RECONCILE_INTERVAL_S,
    ) -> None:
        self.cold = cold
        self.pool = cold.pool
        self.activity = cold.activity
        self.idle_ttl_s = idle_ttl_s
        # Requests per READY replica above which a model gets another one; 0: never.
        self.target_concurrency = target_concurrency
        self.prefetch = prefetch  # hints asked for per pass; 0: no prefetching
        self.interval_s = interval_s
        self._lock = asyncio.Lock()  # one pass / admin change at a time
        self._passes = BackgroundTask(self._loop, "warm pools")

    def start(self) -> None:
        """Run a pass every ``interval_s`` (inside the running loop)."""
        self._passes.start()

    async def stop(self) -> None:
        await self._passes.stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except HeliosError as exc:
                logger.warning("warm-pool pass failed", extra={"error": exc.message})
            await asyncio.sleep(self.interval_s)

    async def reconcile(self) -> None:
        """One pass of warm-pool upkeep: preload to min_replicas, unload idle replicas,
        prefetch what the registry predicts."""
        async with self._lock:
            await self._prefetch()
            now = time.monotonic()
            for spec in list(self.cold.catalogue.values()):
                if self.cold.has_pool(spec.name):
                    continue  # its pool's size is its Deployment's
                holders = [a for a in self.pool.holders(spec.name) if _counted(a)]
                if len(holders) < spec.min_replicas and not self.cold.loading(spec.name):
                    try:
                        await self.cold.load(spec.name, {a.address for a in holders})
                    except HeliosError as exc:
                        logger.info(
                            "preload deferred",
                            extra={"model": spec.name, "reason": exc.message},
                        )
            await self._scale_up_under_load()
            if self.idle_ttl_s <= 0:
                return
            await self._scale_idle_pools(now)
            for agent in self.pool.agents():
                if not agent.healthy:
                    continue
                for name, model in list(agent.models.items()):
                    if model.state != "ready" or self.activity.busy(agent.address, name):
                        continue
                    last = self.activity.last_used_or(agent.address, name, now)
                    if now - last < self.idle_ttl_s:
                        continue
                    entry = self.cold.catalogue.get(name)
                    # Only models the proxy can load back scale to zero; pools of
                    # their own scale as a whole (above).
                    if (
                        entry is None
                        or len(self.pool.holders(name)) <= entry.min_replicas
                        or self.cold.has_pool(name)
                    ):
                        continue
                    try:
                        await self.cold.unload(agent.address, name, reason="idle_ttl")
                    except HeliosError as exc:
                        logger.warning(
                            "idle unload failed",
                            extra={"model": name, "worker": agent.address, "error": exc.message},
                        )

    def demand(self, model: str) -> tuple[int, int]:
        """(requests for ``model`` in flight or queued, its healthy READY replicas)."""
        holders = [a for a in self.pool.holders(model) if a.healthy]
        relayed = sum(self.activity.busy(a.address, model) for a in holders)
        reported = sum(
            a.models[model].running + a.models[model].waiting for a in holders if model in a.models
        )
        return max(relayed, reported), len(holders)

    async def _scale_up_under_load(self) -> None:
        """Start one more replica of each model whose demand is over its target."""
        if self.target_concurrency <= 0:
            return
        for spec in list(self.cold.catalogue.values()):
            if self.cold.has_pool(spec.name):
                continue  # its pool's size is its Deployment's (an autoscaler's job)
            demand, replicas = self.demand(spec.name)
            if (
                replicas == 0  # cold: the request path loads it
                or replicas >= spec.max_replicas
                or self.cold.loading(spec.name)
                or demand <= self.target_concurrency * replicas
            ):
                continue
            need = await self.cold.memory_need(spec.name)
            choice = best_fit(self.pool.placeable_agents(), spec.name, need.bytes)
            if isinstance(choice, NoFit):
                logger.info(
                    "scale-up deferred",
                    extra={
                        "model": spec.name,
                        "demand": demand,
                        "reason": choice.reason(spec.name),
                    },
                )
                continue
            metrics.SCALE_UPS.labels(spec.name).inc()
            logger.info(
                "scaling up under load",
                extra={
                    "model": spec.name,
                    "demand": demand,
                    "replicas": replicas,
                    "worker": choice.address,
                },
            )
            self.cold.start_load_on(choice.address, spec, need)

    async def _prefetch(self) -> None:
        """Load the first registry hint that is loaded nowhere and fits in free memory
        as it is (never evicting for a guess). At most one load per pass."""
        if self.cold.registry is None or self.prefetch <= 0:
            return
        try:
            hints = await self.cold.registry.client.prefetch_hints(self.prefetch)
        except HeliosError as exc:
            metrics.REGISTRY_CALLS.labels("prefetch", "failed").inc()
            logger.warning("registry prefetch hints failed", extra={"error": exc.message})
            return
        metrics.REGISTRY_CALLS.labels("prefetch", "ok").inc()
        for model in (hint.model_id for hint in hints[: self.prefetch]):
            if self.pool.holders(model) or self.cold.loading(model):
                continue
            try:
                if await self.cold.adopt(model) is None:
                    continue
                need = await self.cold.memory_need(model)
            except HeliosError as exc:
                logger.info("prefetch skipped", extra={"model": model, "reason": exc.message})
                continue
            choice = best_fit(self.pool.placeable_agents(), model, need.bytes)
            if isinstance(choice, NoFit):
                continue
            try:
                await self.cold.load_on(choice.address, self.cold.catalogue[model], need)
            except HeliosError as exc:
                logger.info("prefetch failed", extra={"model": model, "reason": exc.message})
                return
            metrics.PREFETCHES.labels(model).inc()
            logger.info("prefetched model", extra={"model": model, "worker": choice.address})
            return

    # -- admin ------------------------------------------------------------------

    async def preload(self, model: str, replicas: int) -> list[str]:
        """Load ``model`` until ``replicas`` agents hold it; the memory is checked
        before any load (UNAVAILABLE with the reason when it cannot fit)."""
        if replicas < 0:
            raise InvalidArgumentError("replicas: must be >= 0")
        spec = await self.cold.spec(model)
        replicas = replicas or 1
        need = await self.cold.memory_need(model)
        async with self._lock:
            holders = {a.address for a in self.pool.holders(model)}
            missing = replicas - len(holders)
            room = [
                a
                for a in self.pool.placeable_agents()
                if a.routable and a.address not in holders and need.bytes <= a.placeable_free
            ]
            if missing > len(room):
                raise UnavailableError(
                    f"model {model} needs {need.bytes} bytes per replica: {len(room)} more"
                    f" workers have room, {missing} asked"
                )
            spec.max_replicas = max(spec.max_replicas, replicas)
            for _ in range(missing):
                await self.cold.load(model, holders)
                holders = {a.address for a in self.pool.holders(model)}
        return sorted(holders)

    async def scale(self, model: str, replicas: int, max_replicas: int = 0) -> list[str]:
        """Keep ``replicas`` warm (0: scale to zero now), loading or unloading to get there."""
        await self.cold.spec(model)
        if replicas < 0 or max_replicas < 0:
            raise InvalidArgumentError("replicas, max_replicas: must be >= 0")
        if max_replicas and max_replicas < replicas:
            raise InvalidArgumentError("max_replicas: must be >= replicas")
        spec = self.cold.catalogue[model]
        spec.min_replicas = replicas
        spec.max_replicas = max(max_replicas or spec.max_replicas, replicas, 1)
        holders = self.pool.holders(model)
        if len(holders) < replicas:
            return await self.preload(model, replicas)
        async with self._lock:
            extra = sorted(
                holders,
                key=lambda a: (
                    self.activity.busy(a.address, model),
                    self.activity.last_used(a.address, model),
                ),
            )[: len(holders) - replicas]
            for agent in extra:
                await self.cold.unload(agent.address, model, reason="scale")
        return sorted(a.address for a in self.pool.holders(model))

    async def evict(self, model: str) -> list[str]:
        """Unload ``model`` from every agent (it stays in the catalogue, cold)."""
        holders = [a.address for a in self.pool.agents() if model in a.models]
        if not holders:
            if model in self.cold.catalogue:
                return []
            raise NotFoundError(f"model {model} is loaded on no worker")
        spec = self.cold.catalogue.get(model)
        if spec is not None:
            spec.min_replicas = 0
        async with self._lock:
            for address in holders:
                await self.cold.unload(address, model, reason="evict")
        return sorted(holders)

    async def _scale_idle_pools(self, now: float) -> None:
        """Scale to zero the pools whose every replica is READY and idle past the TTL."""
        scaler = self.cold.scaler
        if scaler is None:
            return
        by_model: dict[str, list[str]] = {}
        for agent in self.pool.agents():
            for name in agent.models:
                if self.cold.has_pool(name):
                    by_model.setdefault(name, []).append(agent.address)
        self.cold.pools_down &= set(by_model)  # its replicas are gone: it may scale down again
        for name, addresses in by_model.items():
            spec = self.cold.catalogue.get(name)
            if (
                name in self.cold.pools_down
                or self.cold.loading(name)
                or (spec and spec.min_replicas)
            ):
                continue
            task = self.cold.pools_up.get(name)
            if task is not None and not task.done():
                continue
            idle = True
            for address in addresses:
                state = self.pool.view(address).models[name].state
                last = self.activity.last_used_or(address, name, now)
                busy = self.activity.busy(address, name)
                if state != "ready" or busy or now - last < self.idle_ttl_s:
                    idle = False
            if not idle:
                continue
            try:
                await scaler.scale_down(name)
            except HeliosError as exc:
                logger.warning(
                    "idle pool scale-down failed", extra={"model": name, "error": exc.message}
                )
                continue
            self.cold.pools_down.add(name)
            metrics.MODEL_UNLOADS.labels(name, "idle_ttl").inc()
            logger.info(
                "scaled idle model pool to zero",
                extra={"model": name, "replicas": len(addresses)},
            )
