"""The control plane: cold starts, warm pools, scale to zero, eviction, admin actions.

Domain only: workers are reached through :class:`proxy.service.WorkerConnection`.

Cold path: a request for a catalogue model READY nowhere -> its memory need
(:mod:`proxy.estimate`) -> best-fit placement (:mod:`proxy.placement`), evicting idle
models under memory pressure when nothing fits -> LoadModel -> the request waits (its
deadline, bounded by ``load_timeout_s``) until READY. Concurrent cold requests for one
model share one load (single flight).

Warm pools: every ``reconcile()`` (each heartbeat round) brings each catalogue model up
to its ``min_replicas`` where memory allows (preload) and unloads replicas idle longer
than ``idle_ttl_s`` down to ``min_replicas`` (0: scale to zero). Under load it scales up:
when a model's demand (its requests in flight through this proxy, or the running plus
waiting requests its replicas' heartbeats report, whichever is larger) exceeds
``target_concurrency`` per READY replica, one more replica is loaded where it fits in free
memory (never by evicting), up to ``max_replicas``; one such load per model at a time, in
the background (the heartbeat loop does not wait for it). Models outside the
catalogue (loaded by a worker's own flags) are never unloaded for idleness: the proxy
could not load them back.

The registry (``--registry``, :mod:`proxy.registry`) is the source of truth for models:
a request for a model the registry holds that is not in the catalogue joins it (no local
path: the worker fetches the files through storaged; memory need from the estimator by
registry id, else the manifest's total_bytes). Under memory pressure the registry's
eviction candidates order the idle models (those it does not list, pinned ones, stay);
with ``prefetch`` > 0, each reconcile preloads at most one of the registry's prefetch
hints into memory that is free without evicting anything.

Pool scaling (``scaler``, a :class:`PoolScaler`; on Kubernetes ``proxy.k8s.DeploymentPools``):
a model whose workers come in a pool of their own (a Deployment per model and role) is
not loaded onto shared agents: a request for it while no replica is READY asks the
scaler to bring the pool up (0 -> 1; nothing if it is already up and starting) and waits
(single flight, at most ``load_timeout_s``) until discovery lists a replica and its
heartbeat says READY; when every replica has been idle longer than ``idle_ttl_s`` (and
the catalogue asks for no warm replica) the pool is scaled to zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proxy import metrics
from proxy.estimate import MemoryEstimator, MemoryNeed
from proxy.placement import NoFit, best_fit, eviction_plan
from proxy.policies import RouteHint
from proxy.registry import RegistryCatalogue
from proxy.routing import ModelOnAgent, WorkerPool
from runtime.errors import (
    DeadlineExceededError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from proxy.service import WorkerConnection

logger = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 300.0
DEFAULT_DRAIN_S = 30.0


class PoolScaler(Protocol):
    """Scales the worker pools of models that have pools of their own."""

    def manages(self, model: str) -> bool:
        """Whether ``model`` has a pool this scaler can scale."""
        ...

    async def scale_up(self, model: str) -> None:
        """Make sure the pool is meant to have at least one replica (0 -> 1)."""
        ...

    async def scale_down(self, model: str) -> None:
        """Scale the pool to zero replicas."""
        ...


@dataclass
class ModelSpec:
    """A model the proxy may load on demand."""

    name: str
    path: Path | None  # None: a registry model (the worker fetches it through storaged)
    min_replicas: int = 0
    max_replicas: int = 1
    total_bytes: int = 0  # a registry model's size (the memory fallback)


def parse_model_spec(spec: str) -> ModelSpec:
    """``NAME=PATH[,min=N][,max=M]`` -> a catalogue entry."""
    head, *options = spec.split(",")
    name, sep, path = head.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH[,min=N][,max=M], got {spec!r}")
    result = ModelSpec(name, Path(path))
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("min", "max") or not value.isdigit():
            raise ValueError(f"bad option {option!r} in {spec!r}: min=N or max=M")
        setattr(result, f"{key}_replicas", int(value))
    result.max_replicas = max(result.max_replicas, result.min_replicas, 1)
    return result


def _log_background_failure(task: asyncio.Task[Any]) -> None:
    """Done-callback of a background load/scale task that nobody may be awaiting: its
    outcome is still retrieved, and a failure logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.warning(f"{task.get_name()} failed", extra={"error": str(exc)})


class ControlPlane:
    """Loads, unloads and places models on the agents of a :class:`WorkerPool`."""

    def __init__(
        self,
        pool: WorkerPool,
        connections: Mapping[str, WorkerConnection],
        catalogue: Iterable[ModelSpec],
        estimator: MemoryEstimator,
        *,
        refresh: Callable[[str], Awaitable[None]] | None = None,
        idle_ttl_s: float = 0.0,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        drain_s: float = DEFAULT_DRAIN_S,
        registry: RegistryCatalogue | None = None,
        prefetch: int = 0,
        scaler: PoolScaler | None = None,
        pool_poll_s: float = 0.05,
        target_concurrency: int = 0,
    ) -> None:
        self.pool = pool
        # Requests per READY replica above which a model gets another one; 0: never.
        self.target_concurrency = target_concurrency
        self.scaler = scaler
        self.pool_poll_s = pool_poll_s
        self._pools_up: dict[str, asyncio.Task[None]] = {}
        self._pools_down: set[str] = set()  # scaled to zero, replicas not yet gone
        self.registry = registry
        self.prefetch = prefetch  # hints asked for per reconcile; 0: no prefetching
        self._connections = connections
        self.catalogue: dict[str, ModelSpec] = {s.name: s for s in catalogue}
        self.estimator = estimator
        self._refresh = refresh
        self.idle_ttl_s = idle_ttl_s
        self.load_timeout_s = load_timeout_s
        self.drain_s = drain_s
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._active: dict[tuple[str, str], int] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._needs: dict[str, MemoryNeed] = {}
        self._lock = asyncio.Lock()  # one reconcile / admin change at a time

    # -- requests ---------------------------------------------------------------

    def knows(self, model: str) -> bool:
        """Whether ``model`` is in the catalogue or on any agent (not just a name a
        client sent)."""
        return model in self.catalogue or model in self.pool.models()

    @contextmanager
    def active(self, address: str, model: str) -> Iterator[None]:
        """Count a request of ``model`` running on ``address`` (idle TTL, eviction)."""
        key = (address, model)
        self._active[key] = self._active.get(key, 0) + 1
        self._last_used[key] = time.monotonic()
        try:
            yield
        finally:
            self._active[key] -= 1
            self._last_used[key] = time.monotonic()

    def note_activity(self, address: str, model: str) -> None:
        """``address`` served ``model`` without the proxy (its heartbeat says so): the
        idle-TTL clock starts again, as for a request the proxy relays."""
        self._last_used[(address, model)] = time.monotonic()

    def loading(self, model: str) -> bool:
        task = self._loads.get(model)
        return task is not None and not task.done()

    async def replica(
        self,
        model: str,
        deadline_s: float | None,
        hint: RouteHint | None = None,
        exclude: Iterable[str] = (),
    ) -> str:
        """The agent to send a request for ``model`` to, loading it first if it is
        READY nowhere (the cold path)."""
        exclude = set(exclude)
        try:
            return self.pool.pick(model, hint, exclude)
        except (UnavailableError, NotFoundError):
            if self.scaler is not None and self.scaler.manages(model):
                await self.ensure_pool(model, deadline_s)
                try:
                    return self.pool.pick(model, hint, exclude)
                except HeliosError:
                    return self.pool.pick(model, hint)
            if model not in self.catalogue and await self._adopt(model) is None:
                raise
        address = await self.ensure_loaded(model, deadline_s, exclude)
        try:
            return self.pool.pick(model, hint, exclude)
        except HeliosError:
            return address

    async def ensure_loaded(
        self, model: str, deadline_s: float | None, exclude: Iterable[str] = ()
    ) -> str:
        """Wait (at most the deadline) for the one load of ``model`` in flight, starting
        it if there is none. Returns the agent it was loaded on."""
        task = self._loads.get(model)
        if task is None or task.done():
            metrics.COLD_STARTS.labels(model).inc()
            task = asyncio.create_task(self._load(model, set(exclude)), name=f"load {model}")
            self._loads[model] = task
        limit = self.load_timeout_s if deadline_s is None else min(deadline_s, self.load_timeout_s)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=limit)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model {model} was not ready within {limit:.1f}s; it is still loading"
            ) from None

    async def ensure_pool(self, model: str, deadline_s: float | None) -> None:
        """Wait (at most the deadline) until ``model``'s own pool has a READY replica,
        scaling it up first (one scale-up in flight per model)."""
        task = self._pools_up.get(model)
        if task is None or task.done():
            metrics.COLD_STARTS.labels(model).inc()
            task = asyncio.create_task(self._pool_up(model), name=f"scale up {model}")
            # Waiters may all have given up: the outcome is still retrieved (and logged).
            task.add_done_callback(_log_background_failure)
            self._pools_up[model] = task
        limit = self.load_timeout_s if deadline_s is None else min(deadline_s, self.load_timeout_s)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=limit)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model {model}'s pool had no ready replica within {limit:.1f}s;"
                " it is still scaling up"
            ) from None

    async def _pool_up(self, model: str) -> None:
        assert self.scaler is not None
        started = time.monotonic()
        self._pools_down.discard(model)
        logger.info("scaling up model pool", extra={"model": model})
        await self.scaler.scale_up(model)
        try:
            async with asyncio.timeout(self.load_timeout_s):
                # Discovery and heartbeats update the pool; there is no event to await.
                while not self.pool.candidates(model):  # noqa: ASYNC110
                    await asyncio.sleep(self.pool_poll_s)
        except TimeoutError:
            raise UnavailableError(
                f"model {model}'s pool had no ready replica {self.load_timeout_s:.0f}s"
                " after scaling up"
            ) from None
        seconds = time.monotonic() - started
        metrics.COLD_START_SECONDS.labels(model).observe(seconds)
        logger.info("model pool ready", extra={"model": model, "seconds": round(seconds, 3)})

    async def _scale_idle_pools(self, now: float) -> None:
        """Scale to zero the pools whose every replica is READY and idle past the TTL."""
        if self.scaler is None:
            return
        by_model: dict[str, list[str]] = {}
        for agent in self.pool.agents():
            for name in agent.models:
                if self.scaler.manages(name):
                    by_model.setdefault(name, []).append(agent.address)
        self._pools_down &= set(by_model)  # its replicas are gone: it may scale down again
        for name, addresses in by_model.items():
            spec = self.catalogue.get(name)
            if name in self._pools_down or self.loading(name) or (spec and spec.min_replicas):
                continue
            task = self._pools_up.get(name)
            if task is not None and not task.done():
                continue
            idle = True
            for address in addresses:
                state = self.pool.view(address).models[name].state
                last = self._last_used.setdefault((address, name), now)
                busy = self._active.get((address, name), 0)
                if state != "ready" or busy or now - last < self.idle_ttl_s:
                    idle = False
            if not idle:
                continue
            try:
                await self.scaler.scale_down(name)
            except HeliosError as exc:
                logger.warning(
                    "idle pool scale-down failed", extra={"model": name, "error": exc.message}
                )
                continue
            self._pools_down.add(name)
            metrics.MODEL_UNLOADS.labels(name, "idle_ttl").inc()
            logger.info(
                "scaled idle model pool to zero",
                extra={"model": name, "replicas": len(addresses)},
            )

    async def _adopt(self, model: str) -> ModelSpec | None:
        """The catalogue entry of ``model``, adding it when the registry holds it."""
        spec = self.catalogue.get(model)
        if spec is not None or self.registry is None:
            return spec
        found = await self.registry.lookup(model)
        if found is None:
            return None
        spec = self.catalogue.get(model)  # another request may have added it meanwhile
        if spec is None:
            spec = ModelSpec(model, None, total_bytes=found.total_bytes)
            self.catalogue[model] = spec
            logger.info(
                "registry model joins the catalogue",
                extra={"model": model, "version": found.version, "bytes": found.total_bytes},
            )
        return spec

    async def spec(self, model: str) -> ModelSpec:
        spec = await self._adopt(model)
        if spec is None:
            raise NotFoundError(f"The model `{model}` does not exist")
        return spec

    def registry_model(self, model: str) -> bool:
        """Whether ``model`` is one the registry holds (its usage is worth reporting)."""
        return self.registry is not None and model in self.registry.models

    async def memory_need(self, model: str) -> MemoryNeed:
        spec = await self.spec(model)
        need = await self.estimator.need(model, spec.path, spec.total_bytes)
        self._needs[model] = need
        return need

    async def _load(self, model: str, exclude: set[str]) -> str:
        spec = self.catalogue[model]
        need = await self.memory_need(model)
        tried = set(exclude)
        while True:
            choice = best_fit(self.pool.placeable_agents(), model, need.bytes, exclude=tried)
            if isinstance(choice, NoFit):
                if await self._evict_for(model, need.bytes, tried):
                    continue
                metrics.SHED.labels("no_capacity").inc()
                raise UnavailableError(choice.reason(model))
            try:
                await self._load_on(choice.address, spec, need)
                return choice.address
            except ResourceExhaustedError as exc:
                # The agent's own figure was fresher than ours: try the next best.
                logger.info(
                    "worker had no room after all",
                    extra={"model": model, "worker": choice.address, "error": exc.message},
                )
                tried.add(choice.address)
            except UnavailableError:
                self.pool.record_request_failure(choice.address)
                tried.add(choice.address)

    async def _load_on(self, address: str, spec: ModelSpec, need: MemoryNeed) -> None:
        agent = self.pool.view(address)
        agent.reserved += need.bytes
        self.pool.mark_model(address, ModelOnAgent(spec.name, "loading", memory_bytes=need.bytes))
        started = time.monotonic()
        outcome = "failed"
        logger.info(
            "loading model",
            extra={"model": spec.name, "worker": address, "need_bytes": need.bytes},
        )
        try:
            connection = self._connections[address]
            ready = False
            local_path = "" if spec.path is None else str(spec.path)
            async for state in connection.load_model(spec.name, local_path, self.load_timeout_s):
                if state == "ready":
                    ready = True
            if not ready:
                raise UnavailableError(f"worker {address} ended LoadModel before READY")
            outcome = "ready"
            agent.memory_free -= need.bytes  # until the next heartbeat says it itself
            self.pool.mark_model(address, ModelOnAgent(spec.name, "ready", memory_bytes=need.bytes))
            self._last_used[(address, spec.name)] = time.monotonic()
            seconds = time.monotonic() - started
            metrics.COLD_START_SECONDS.labels(spec.name).observe(seconds)
            logger.info(
                "model ready",
                extra={"model": spec.name, "worker": address, "seconds": round(seconds, 3)},
            )
        except ResourceExhaustedError:
            outcome = "no_room"
            raise
        finally:
            agent.reserved -= need.bytes
            metrics.MODEL_LOADS.labels(spec.name, address, outcome).inc()
            if outcome != "ready":
                self.pool.forget_model(address, spec.name)

    # -- unloading --------------------------------------------------------------

    def _idle_models(self, address: str, now: float) -> list[tuple[str, int, float]]:
        """Models on ``address`` with no request running that may go: (model, bytes,
        last used), keeping every model at its min_replicas."""
        agent = self.pool.view(address)
        result = []
        for name, model in agent.models.items():
            if model.state != "ready" or self._active.get((address, name), 0):
                continue
            if self.scaler is not None and self.scaler.manages(name):
                continue  # a pool of its own: its replicas are not shared room
            spec = self.catalogue.get(name)
            if spec is not None and len(self.pool.holders(name)) <= spec.min_replicas:
                continue
            size = model.memory_bytes or (self._needs[name].bytes if name in self._needs else 0)
            result.append((name, size, self._last_used.get((address, name), 0.0)))
        return result

    async def _registry_order(self, idle: Iterable[str]) -> dict[str, int] | None:
        """Eviction ranks from the registry for the idle models it holds (those it
        leaves out, e.g. pinned, are absent); None without a registry or when it fails."""
        if self.registry is None:
            return None
        loaded = sorted({m for m in idle if m in self.registry.models})
        if not loaded:
            return None
        try:
            order = await self.registry.client.eviction_candidates(0, loaded)
        except HeliosError as exc:
            metrics.REGISTRY_CALLS.labels("eviction", "failed").inc()
            logger.warning("registry eviction candidates failed", extra={"error": exc.message})
            return None
        metrics.REGISTRY_CALLS.labels("eviction", "ok").inc()
        ranks = {name: i for i, name in enumerate(order)}
        # Held by the registry but not a candidate: pinned, never evicted.
        return {m: ranks.get(m, -1) for m in loaded}

    async def _evict_for(self, model: str, need_bytes: int, exclude: set[str]) -> bool:
        """Unload idle models from the one agent where that makes ``model`` fit with the
        fewest bytes evicted. False when no agent can be made to fit."""
        now = time.monotonic()
        best: tuple[int, str, list[str]] | None = None
        candidates = [
            a
            for a in self.pool.placeable_agents()
            if a.routable and a.address not in exclude and model not in a.models
        ]
        idle_by_agent = {a.address: self._idle_models(a.address, now) for a in candidates}
        order = await self._registry_order(
            name for idle in idle_by_agent.values() for name, _, _ in idle
        )
        for agent in candidates:
            idle = idle_by_agent[agent.address]
            plan = eviction_plan(agent, need_bytes, idle, order)
            if not plan:
                continue
            sizes = {name: size for name, size, _ in idle}
            cost = sum(sizes[name] for name in plan)
            if best is None or cost < best[0]:
                best = (cost, agent.address, plan)
        if best is None:
            return False
        _, address, plan = best
        for victim in plan:
            await self.unload(address, victim, reason="pressure")
        return True

    async def unload(self, address: str, model: str, *, reason: str) -> None:
        logger.info("unloading model", extra={"model": model, "worker": address, "reason": reason})
        self.pool.mark_model(address, ModelOnAgent(model, "draining"))
        try:
            await self._connections[address].unload_model(model, self.drain_s)
        except NotFoundError:
            pass  # already gone
        finally:
            self.pool.forget_model(address, model)
            self._last_used.pop((address, model), None)
        metrics.MODEL_UNLOADS.labels(model, reason).inc()
        if self._refresh is not None:
            await self._refresh(address)

    # -- warm pools -------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass of warm-pool upkeep: preload to min_replicas, unload idle replicas,
        prefetch what the registry predicts."""
        async with self._lock:
            await self._prefetch()
            now = time.monotonic()
            for spec in list(self.catalogue.values()):
                if self.scaler is not None and self.scaler.manages(spec.name):
                    continue  # its pool's size is its Deployment's
                holders = [a for a in self.pool.holders(spec.name) if a.healthy]
                if len(holders) < spec.min_replicas and not self.loading(spec.name):
                    try:
                        await self._load(spec.name, {a.address for a in holders})
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
                    if model.state != "ready" or self._active.get((agent.address, name), 0):
                        continue
                    last = self._last_used.setdefault((agent.address, name), now)
                    if now - last < self.idle_ttl_s:
                        continue
                    entry = self.catalogue.get(name)
                    # Only models the proxy can load back scale to zero; pools of
                    # their own scale as a whole (above).
                    if (
                        entry is None
                        or len(self.pool.holders(name)) <= entry.min_replicas
                        or (self.scaler is not None and self.scaler.manages(name))
                    ):
                        continue
                    try:
                        await self.unload(agent.address, name, reason="idle_ttl")
                    except HeliosError as exc:
                        logger.warning(
                            "idle unload failed",
                            extra={"model": name, "worker": agent.address, "error": exc.message},
                        )

    def demand(self, model: str) -> tuple[int, int]:
        """(requests for ``model`` in flight or queued, its healthy READY replicas)."""
        holders = [a for a in self.pool.holders(model) if a.healthy]
        relayed = sum(self._active.get((a.address, model), 0) for a in holders)
        reported = sum(
            a.models[model].running + a.models[model].waiting for a in holders if model in a.models
        )
        return max(relayed, reported), len(holders)

    async def _scale_up_under_load(self) -> None:
        """Start one more replica of each model whose demand is over its target."""
        if self.target_concurrency <= 0:
            return
        for spec in list(self.catalogue.values()):
            if self.scaler is not None and self.scaler.manages(spec.name):
                continue  # its pool's size is its Deployment's (an autoscaler's job)
            demand, replicas = self.demand(spec.name)
            if (
                replicas == 0  # cold: the request path loads it
                or replicas >= spec.max_replicas
                or self.loading(spec.name)
                or demand <= self.target_concurrency * replicas
            ):
                continue
            need = await self.memory_need(spec.name)
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
            task = asyncio.create_task(
                self._scale_up_on(choice.address, spec, need), name=f"scale up {spec.name}"
            )
            task.add_done_callback(_log_background_failure)
            self._loads[spec.name] = task

    async def _scale_up_on(self, address: str, spec: ModelSpec, need: MemoryNeed) -> str:
        await self._load_on(address, spec, need)
        return address

    async def _prefetch(self) -> None:
        """Load the first registry hint that is loaded nowhere and fits in free memory
        as it is (never evicting for a guess). At most one load per pass."""
        if self.registry is None or self.prefetch <= 0:
            return
        try:
            hints = await self.registry.client.prefetch_hints(self.prefetch)
        except HeliosError as exc:
            metrics.REGISTRY_CALLS.labels("prefetch", "failed").inc()
            logger.warning("registry prefetch hints failed", extra={"error": exc.message})
            return
        metrics.REGISTRY_CALLS.labels("prefetch", "ok").inc()
        for model, _ in hints[: self.prefetch]:
            if self.pool.holders(model) or self.loading(model):
                continue
            try:
                if await self._adopt(model) is None:
                    continue
                need = await self.memory_need(model)
            except HeliosError as exc:
                logger.info("prefetch skipped", extra={"model": model, "reason": exc.message})
                continue
            choice = best_fit(self.pool.placeable_agents(), model, need.bytes)
            if isinstance(choice, NoFit):
                continue
            try:
                await self._load_on(choice.address, self.catalogue[model], need)
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
        spec = await self.spec(model)
        replicas = replicas or 1
        need = await self.memory_need(model)
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
                await self._load(model, holders)
                holders = {a.address for a in self.pool.holders(model)}
        return sorted(holders)

    async def scale(self, model: str, replicas: int, max_replicas: int = 0) -> list[str]:
        """Keep ``replicas`` warm (0: scale to zero now), loading or unloading to get there."""
        await self.spec(model)
        if replicas < 0 or max_replicas < 0:
            raise InvalidArgumentError("replicas, max_replicas: must be >= 0")
        if max_replicas and max_replicas < replicas:
            raise InvalidArgumentError("max_replicas: must be >= replicas")
        spec = self.catalogue[model]
        spec.min_replicas = replicas
        spec.max_replicas = max(max_replicas or spec.max_replicas, replicas, 1)
        holders = self.pool.holders(model)
        if len(holders) < replicas:
            return await self.preload(model, replicas)
        async with self._lock:
            extra = sorted(
                holders,
                key=lambda a: (
                    self._active.get((a.address, model), 0),
                    self._last_used.get((a.address, model), 0.0),
                ),
            )[: len(holders) - replicas]
            for agent in extra:
                await self.unload(agent.address, model, reason="scale")
        return sorted(a.address for a in self.pool.holders(model))

    async def evict(self, model: str) -> list[str]:
        """Unload ``model`` from every agent (it stays in the catalogue, cold)."""
        holders = [a.address for a in self.pool.agents() if model in a.models]
        if not holders:
            if model in self.catalogue:
                return []
            raise NotFoundError(f"model {model} is loaded on no worker")
        spec = self.catalogue.get(model)
        if spec is not None:
            spec.min_replicas = 0
        async with self._lock:
            for address in holders:
                await self.unload(address, model, reason="evict")
        return sorted(holders)

    def model_profile(self, model: str) -> tuple[MemoryNeed | None, str]:
        """(memory need if known, warm status) of ``model``."""
        need = self._needs.get(model)
        if self.pool.candidates(model):
            status = "warm"
        elif self.loading(model) or any(
            a.models[model].state in ("loading", "downloading") for a in self.pool.holders(model)
        ):
            status = "loading"
        else:
            status = "cold"
        return need, status
