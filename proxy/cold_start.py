"""Placement and cold starts: where a model goes, loading it there, making room.

Domain only: workers are reached through :class:`proxy.fleet.WorkerConnection`.

A request for a catalogue model READY nowhere (it reached the proxy because Envoy had no
route for it) -> its memory need (:mod:`proxy.estimate`) -> best-fit placement
(:mod:`proxy.placement`), evicting idle models under memory pressure when nothing fits
-> LoadModel -> the request waits (its deadline, bounded by ``load_timeout_s``) until
READY. Concurrent cold requests for one model share one load (single flight).

The registry (``--registry``, :mod:`proxy.registry`) is the source of truth for models:
a request for a model the registry holds that is not in the catalogue joins it (no local
path: the worker fetches the files through storaged; memory need from the estimator by
registry id, else the manifest's total_bytes). Under memory pressure the registry's
eviction candidates order the idle models (those it does not list, pinned ones, stay).

Pool scaling (``scaler``, a :class:`PoolScaler`; on Kubernetes ``proxy.k8s.DeploymentPools``):
a model whose workers come in a pool of their own (a Deployment per model and role) is
not loaded onto shared agents: a request for it while no replica is READY asks the
scaler to bring the pool up (0 -> 1; nothing if it is already up and starting) and waits
(single flight, at most ``load_timeout_s``) until discovery lists a replica and its
heartbeat says READY.

What keeps models warm, scales them and unloads idle ones is :mod:`proxy.warm_pools`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy import metrics
from proxy.activity import Activity
from proxy.estimate import MemoryEstimator, MemoryNeed
from proxy.fleet import ModelOnAgent, WorkerConnection, WorkerPool
from proxy.placement import NoFit, best_fit, eviction_plan
from proxy.registry import RegistryCatalogue
from runtime.errors import (
    DeadlineExceededError,
    HeliosError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 300.0
DEFAULT_DRAIN_S = 30.0
# Why an unload asks the worker to keep the model asleep (where its engine can sleep):
# a model that went idle or whose demand fell may come back, and waking it takes seconds;
# one unloaded for another model's memory or by an operator is freed. With a registry,
# only a model its usage forecasts back within the hour sleeps (expected_back).
KEEP_ASLEEP_REASONS = frozenset({"idle_ttl", "scale"})


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


def log_background_failure(task: asyncio.Task[Any]) -> None:
    """Done-callback of a background load/scale task that nobody may be awaiting: its
    outcome is still retrieved, and a failure logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.warning(f"{task.get_name()} failed", extra={"error": str(exc)})


class ColdStarts:
    """Places, loads and unloads models on the agents of a :class:`WorkerPool`."""

    def __init__(
        self,
        pool: WorkerPool,
        connections: Mapping[str, WorkerConnection],
        catalogue: Iterable[ModelSpec],
        estimator: MemoryEstimator,
        *,
        activity: Activity | None = None,
        refresh: Callable[[str], Awaitable[None]] | None = None,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        drain_s: float = DEFAULT_DRAIN_S,
        registry: RegistryCatalogue | None = None,
        scaler: PoolScaler | None = None,
        pool_poll_s: float = 0.05,
    ) -> None:
        self.pool = pool
        self.activity = activity or Activity()
        self.scaler = scaler
        self.pool_poll_s = pool_poll_s
        self.pools_up: dict[str, asyncio.Task[None]] = {}
        self.pools_down: set[str] = set()  # scaled to zero, replicas not yet gone
        self.registry = registry
        self._connections = connections
        self.catalogue: dict[str, ModelSpec] = {s.name: s for s in catalogue}
        self.estimator = estimator
        self._refresh = refresh
        self.load_timeout_s = load_timeout_s
        self.drain_s = drain_s
        self._loads: dict[str, asyncio.Task[str]] = {}
        # Every LoadModel in flight, whoever started it (a cold request, the warm pools'
        # min replicas or scale-up, an admin preload or scale, prefetch): model ->
        # address -> whether it ended READY.
        self._loading_on: dict[str, dict[str, asyncio.Future[bool]]] = {}
        self._needs: dict[str, MemoryNeed] = {}
        # Until the edge routes as the pool says now (XdsServer.edge_synced; set later).
        self.edge_synced: Callable[[], Awaitable[bool]] | None = None

    def knows(self, model: str) -> bool:
        """Whether ``model`` is in the catalogue or on any agent (not just a name a
        client sent)."""
        return model in self.catalogue or model in self.pool.models()

    def loading(self, model: str) -> bool:
        task = self._loads.get(model)
        return (task is not None and not task.done()) or bool(self._loading_on.get(model))

    async def load_in_flight(self, model: str) -> str | None:
        """Wait for the loads of ``model`` in flight (any caller's); the agent of the
        first that ends READY, or None when there are none (left) or all failed."""
        while True:
            pending = self._loading_on.get(model)
            if not pending:
                return None
            by_future = {future: address for address, future in pending.items()}
            # asyncio.wait never cancels what it waits for.
            await asyncio.wait(list(by_future), return_when=asyncio.FIRST_COMPLETED)
            for future, address in by_future.items():
                if future.done() and future.result():
                    return address
            # The failed ones have left _loading_on: wait for the rest.

    def has_pool(self, model: str) -> bool:
        """Whether ``model``'s workers are a pool of their own (scaled, not loaded)."""
        return self.scaler is not None and self.scaler.manages(model)

    async def replica(self, model: str, deadline_s: float | None) -> str:
        """The agent to send a request for ``model`` to, loading it first if it is
        READY nowhere (the cold path)."""
        try:
            return self.pool.pick(model)
        except (UnavailableError, NotFoundError):
            if self.has_pool(model):
                with metrics.QUEUED_REQUESTS.labels(model).track_inprogress():
                    await self.ensure_pool(model, deadline_s)
                return self.pool.pick(model)
            if model not in self.catalogue and await self.adopt(model) is None:
                raise
        with metrics.QUEUED_REQUESTS.labels(model).track_inprogress():
            address = await self.ensure_loaded(model, deadline_s)
        try:
            return self.pool.pick(model)
        except HeliosError:
            return address

    async def ensure_loaded(self, model: str, deadline_s: float | None) -> str:
        """Wait (at most the deadline) for the one load of ``model`` in flight, starting
        it if there is none. Returns the agent it was loaded on."""
        task = self._loads.get(model)
        if task is None or task.done():
            metrics.COLD_STARTS.labels(model).inc()
            task = asyncio.create_task(self._join_or_load(model), name=f"load {model}")
            self._loads[model] = task
        limit = self.load_timeout_s if deadline_s is None else min(deadline_s, self.load_timeout_s)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=limit)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model {model} was not ready within {limit:.1f}s; it is still loading"
            ) from None

    async def _join_or_load(self, model: str) -> str:
        """A cold request's load: the one in flight, when the warm pools or an admin
        call started one (a second copy elsewhere is not what anyone asked for), else a
        new one."""
        address = await self.load_in_flight(model)
        if address is not None:
            return address
        return await self.load(model, set())

    async def ensure_pool(self, model: str, deadline_s: float | None) -> None:
        """Wait (at most the deadline) until ``model``'s own pool has a READY replica,
        scaling it up first (one scale-up in flight per model)."""
        task = self.pools_up.get(model)
        if task is None or task.done():
            metrics.COLD_STARTS.labels(model).inc()
            task = asyncio.create_task(self._pool_up(model), name=f"scale up {model}")
            # Waiters may all have given up: the outcome is still retrieved (and logged).
            task.add_done_callback(log_background_failure)
            self.pools_up[model] = task
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
        self.pools_down.discard(model)
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

    async def adopt(self, model: str) -> ModelSpec | None:
        """The catalogue entry of ``model``, adding it when the registry holds it."""
        spec = self.catalogue.get(model)
        if spec is not None or self.registry is None:
            return spec
        found = await self.registry.lookup(model)
        if found is None or found.base:  # a LoRA adapter is served on its base, never loaded
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
        spec = await self.adopt(model)
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

    async def load(self, model: str, exclude: set[str]) -> str:
        spec = self.catalogue[model]
        need = await self.memory_need(model)
        tried = set(exclude)
        while True:
            choice = best_fit(self.pool.placeable_agents(), model, need.bytes, exclude=tried)
            if isinstance(choice, NoFit):
                # Agents loading the model are no place for another copy, but a load in
                # flight there serves this caller too: a cold request that came while
                # the warm pools (or an admin scale) were loading the model used to be
                # refused "no worker is available" with every agent busy loading it.
                if self.loading_elsewhere(model):
                    address = await self.load_in_flight(model)
                    if address is not None:
                        return address
                    continue
                if await self._evict_for(model, need.bytes, tried):
                    continue
                metrics.SHED.labels("no_capacity").inc()
                raise UnavailableError(choice.reason(model), reason="no_capacity")
            try:
                await self.load_on(choice.address, spec, need)
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

    def loading_elsewhere(self, model: str) -> bool:
        """Whether a LoadModel of ``model`` is in flight (any caller's)."""
        return bool(self._loading_on.get(model))

    async def load_on(self, address: str, spec: ModelSpec, need: MemoryNeed) -> None:
        agent = self.pool.view(address)
        flights = self._loading_on.setdefault(spec.name, {})
        flight: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        flights[address] = flight
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
            self.activity.note(address, spec.name)
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
            if flights.get(address) is flight:
                del flights[address]
            if not flights and self._loading_on.get(spec.name) is flights:
                del self._loading_on[spec.name]
            flight.set_result(outcome == "ready")

    def _idle_models(self, address: str, now: float) -> list[tuple[str, int, float]]:
        """Models on ``address`` with no request running that may go: (model, bytes,
        last used), keeping every model at its min_replicas."""
        agent = self.pool.view(address)
        result = []
        for name, model in agent.models.items():
            if model.state != "ready" or self.activity.busy(address, name):
                continue
            if self.has_pool(name):
                continue  # a pool of its own: its replicas are not shared room
            spec = self.catalogue.get(name)
            if spec is not None and len(self.pool.holders(name)) <= spec.min_replicas:
                continue
            size = model.memory_bytes or (self._needs[name].bytes if name in self._needs else 0)
            result.append((name, size, self.activity.last_used(address, name)))
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
            if a.routable and a.address not in exclude and not a.holds(model)
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
        keep_asleep = reason in KEEP_ASLEEP_REASONS and (
            self.registry is None or await self.registry.expected_back(model)
        )
        logger.info(
            "unloading model",
            extra={"model": model, "worker": address, "reason": reason, "asleep": keep_asleep},
        )
        self.pool.mark_model(address, ModelOnAgent(model, "draining"))
        if self.edge_synced is not None:
            # Make before break: Envoy stops routing the model here before the worker
            # lets it go (else, with no other replica, a 503 instead of the cold path).
            await self.edge_synced()
        try:
            await self._connections[address].unload_model(
                model, self.drain_s, keep_asleep=keep_asleep
            )
        except NotFoundError:
            pass  # already gone
        finally:
            self.pool.forget_model(address, model)
            self.activity.forget(address, model)
        metrics.MODEL_UNLOADS.labels(model, reason).inc()
        if self._refresh is not None:
            await self._refresh(address)

    def start_load_on(self, address: str, spec: ModelSpec, need: MemoryNeed) -> None:
        """Load ``spec`` on ``address`` in the background, as the model's one load in
        flight (a scale-up: requests keep going to its READY replicas meanwhile)."""

        async def load() -> str:
            await self.load_on(address, spec, need)
            return address

        task = asyncio.create_task(load(), name=f"scale up {spec.name}")
        task.add_done_callback(log_background_failure)
        self._loads[spec.name] = task

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
