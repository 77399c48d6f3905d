"""Fleet state: every worker (*agent*) as the proxy knows it from heartbeats.

Domain only. Each agent has a state (IDLE, DOWNLOADING, LOADING, READY, DRAINING,
DEGRADED), a role, the models it holds (state, cache level, load) and its memory as it
declares it (the GPU's own figure where a worker has one, otherwise its configured
capacity: that is the figure placement uses). Every agent also reports what its node's
storaged holds (model -> fastest tier), so placement can prefer an agent that loads a
model from local RAM or NVMe over one that has to download it
(:meth:`WorkerView.cache_level`).

An agent takes part in routing while its heartbeats answer: the first failed heartbeat
(refused, reset, past its short deadline) takes it out, the next good one brings it
back. Observers (:meth:`WorkerPool.subscribe`: the xDS control plane) hear of every
change, so Envoy's endpoints follow within a heartbeat interval plus a push.

Warm requests never pass through here: Envoy balances them (``proxy.xds_snapshot``).
What the proxy itself sends a worker -- a cold request once its model is READY, a
native gRPC request without the model header -- goes to the least outstanding READY
agent (:meth:`WorkerPool.pick`). Roles (disaggregated serving): ``both`` agents serve
whole generations; ``prefill`` and ``decode`` agents form a model's prefill and decode
pools, which :meth:`WorkerPool.pick_disaggregated` pairs up (see :mod:`proxy.disagg`).

Workers are reached through :class:`WorkerConnection` (``proxy.worker_client``
implements it over gRPC); a heartbeat's content is a :class:`WorkerStatus`.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from openai_compat.backend import Step
from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.params import Job
from proxy.adapters import Adapter
from proxy.observers import Observers
from proxy.served import ServedTotals
from runtime.errors import NotFoundError, UnavailableError
from worker_api.disagg import PrefillPeer, PrefillResult


class AgentState(enum.StrEnum):
    """An agent's own state, as its heartbeat reports it (DEGRADED also when the
    proxy cannot reach it)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    DEGRADED = "degraded"


class WorkerRole(enum.StrEnum):
    """Which phases of a generation an agent serves (its ``--role``)."""

    BOTH = "both"  # Generate (and Prefill/Decode): a whole generation on one agent
    PREFILL = "prefill"  # Prefill and TransferKVCache only
    DECODE = "decode"  # Decode only


class CacheLevel(enum.StrEnum):
    """Where a model's weights are on an agent, fastest first."""

    # Its engine sleeps there (vLLM's sleep mode): a load wakes it in seconds.
    ASLEEP = "asleep"
    GPU = "gpu"
    RAM = "ram"
    NVME = "nvme"
    REMOTE = "remote"


@dataclass(frozen=True)
class ModelOnAgent:
    """One model on one agent, from the agent's heartbeat."""

    model: str
    state: str  # downloading | loading | ready | draining | failed
    cache_level: CacheLevel = CacheLevel.GPU
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    memory_bytes: int = 0
    error: str = ""
    # The LoRA adapters loaded on it (proxy.adapters).
    adapters: tuple[str, ...] = ()
    # Its last load there, (phase, seconds) in load order (worker/load_phases.py).
    load_phases: tuple[tuple[str, float], ...] = ()


@dataclass
class WorkerView:
    """What the proxy knows of one agent."""

    address: str
    worker_id: str = ""
    state: AgentState = AgentState.IDLE
    role: WorkerRole = WorkerRole.BOTH
    models: dict[str, ModelOnAgent] = field(default_factory=dict)
    healthy: bool = False
    outstanding: int = 0
    last_heartbeat: float = 0.0
    memory_total: int = 0
    memory_free: int = 0
    memory_source: str = ""
    queue_depth: int = 0
    # Bytes promised to loads in flight (not yet in the agent's own figure).
    reserved: int = 0
    model_first_seen: dict[str, float] = field(default_factory=dict)
    # What the node's storaged holds: lower-cased model id -> its fastest tier.
    stored: dict[str, CacheLevel] = field(default_factory=dict)
    # Counts what the proxy itself learnt of this agent's models (a load or unload it
    # made: mark_model, forget_model). A heartbeat sent before such a change and answered
    # after it says what was true before: see proxy.heartbeats.
    local_changes: int = 0
    # Models the proxy is unloading here (mark_model "draining" until forget_model): a
    # heartbeat answered before the worker starts its drain still says READY, and must
    # not route requests to a model on its way out (see proxy.cold_start's unload).
    unloading: set[str] = field(default_factory=set)
    # The adapter table its last heartbeat handed it (proxy.adapters): the adapters it
    # can tell the base of by their id alone.
    adapter_table: tuple[Adapter, ...] = ()
    # The port of its OpenAI REST endpoint (its streamed REST requests go there), 0: none,
    # and the Unix socket the endpoint also listens on ("": none).
    rest_port: int = 0
    rest_socket: str = ""

    def holds(self, model: str) -> bool:
        """Whether ``model`` is on this agent in any state but failed or asleep. A failed
        load (say, storaged was down) leaves the agent free to load it again: placement
        must not pass it over for good (that was a permanent 503 after a storaged restart);
        an asleep one is where a load of it is fastest (it wakes)."""
        held = self.models.get(model)
        return held is not None and held.state not in ("failed", "asleep")

    def cache_level(self, model: str) -> CacheLevel:
        """Where ``model``'s weights are on this agent: GPU when it is loaded (or being
        loaded), else the fastest tier its storaged holds them in, else REMOTE. Model ids
        compare case-insensitively (storaged reports the registry's lower-case ids)."""
        if self.holds(model):
            return CacheLevel.GPU
        held = self.models.get(model)
        if held is not None and held.state == "asleep":
            return CacheLevel.ASLEEP
        return self.stored.get(model.lower(), CacheLevel.REMOTE)

    @property
    def ready_models(self) -> frozenset[str]:
        return frozenset(m for m, s in self.models.items() if s.state == "ready")

    def is_ready(self, model: str) -> bool:
        status = self.models.get(model)
        return status is not None and status.state == "ready"

    @property
    def known_models(self) -> frozenset[str]:
        return frozenset(self.models)

    @property
    def routable(self) -> bool:
        """Takes new requests: its last heartbeat answered (and no request the proxy
        sent it failed since)."""
        return self.healthy

    @property
    def placeable_free(self) -> int:
        """Free memory for a new model: the declared free figure less reservations."""
        return self.memory_free - self.reserved


def _least_outstanding(candidates: Sequence[WorkerView]) -> WorkerView:
    return min(candidates, key=lambda w: (w.outstanding, w.address))


class WorkerPool:
    """The agents discovery knows (a static list by default, see :mod:`proxy.discovery`)."""

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._workers: dict[str, WorkerView] = {}
        self._observers = Observers()
        for address in addresses:
            self.add(address)

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` after every change of the fleet state (agent added or
        removed, heartbeat or heartbeat failure, model state learnt or forgotten, request
        failure); returns the function that unsubscribes it. Observers run synchronously
        inside the change and must be cheap and not block (e.g. schedule work on the
        loop); they may be called when nothing they care about changed."""
        return self._observers.subscribe(observer)

    def _changed(self) -> None:
        self._observers.notify()

    @property
    def addresses(self) -> list[str]:
        return list(self._workers)

    def agents(self) -> list[WorkerView]:
        return list(self._workers.values())

    def placeable_agents(self) -> list[WorkerView]:
        """Agents a model may be loaded on for whole generations: role ``both``. Prefill
        and decode pools are provisioned as pools (their own Deployments), never by the
        proxy's cold-start placement, which would load a model where it cannot serve."""
        return [w for w in self._workers.values() if w.role is WorkerRole.BOTH]

    def add(self, address: str) -> WorkerView:
        if address not in self._workers:
            self._workers[address] = WorkerView(address=address)
            self._changed()
        return self._workers[address]

    def remove(self, address: str) -> None:
        if self._workers.pop(address, None) is not None:
            self._changed()

    def view(self, address: str) -> WorkerView:
        return self._workers[address]

    def record_heartbeat(
        self,
        address: str,
        *,
        worker_id: str,
        ready_models: Iterable[str] = (),
        known_models: Iterable[str] = (),
        healthy: bool,
        models: Sequence[ModelOnAgent] | None = None,
        state: AgentState | None = None,
        memory_total: int = 0,
        memory_free: int = 0,
        memory_source: str = "",
        queue_depth: int = 0,
        role: WorkerRole | None = None,
        stored: Mapping[str, CacheLevel] | None = None,
        now: float | None = None,
        adapters: Sequence[Adapter] = (),
        rest_port: int = 0,
        rest_socket: str = "",
    ) -> None:
        """A heartbeat answered. ``models`` (full detail) wins over the name lists.
        ``stored`` is what the agent's storaged holds (model -> fastest tier);
        ``adapters`` the adapter table the heartbeat handed it; ``rest_port`` the port
        of its REST endpoint (0: none), ``rest_socket`` its Unix socket ("": none)."""
        worker = self._workers[address]
        now = time.time() if now is None else now
        if models is None:
            ready = set(ready_models)
            models = [
                ModelOnAgent(m, "ready" if m in ready else "loading")
                for m in {*known_models, *ready}
            ]
        worker.worker_id = worker_id
        worker.models = {
            m.model: dataclasses.replace(m, state="draining") if m.model in worker.unloading else m
            for m in models
        }
        for model in worker.models:
            worker.model_first_seen.setdefault(model, now)
        worker.healthy = healthy
        worker.state = state or (AgentState.READY if worker.ready_models else AgentState.IDLE)
        if not healthy:
            worker.state = AgentState.DEGRADED
        worker.memory_total = memory_total
        worker.memory_free = memory_free
        worker.memory_source = memory_source
        worker.queue_depth = queue_depth
        if role is not None:
            worker.role = role
        worker.stored = {m.lower(): level for m, level in (stored or {}).items()}
        worker.adapter_table = tuple(adapters)
        worker.rest_port = rest_port
        worker.rest_socket = rest_socket
        worker.last_heartbeat = now
        self._changed()

    def record_failure(self, address: str) -> None:
        """A heartbeat to ``address`` failed (refused, reset, no answer in time): the
        agent takes nothing new until a heartbeat answers again."""
        self.record_request_failure(address)

    def record_request_failure(self, address: str) -> None:
        """A call to ``address`` failed because of the agent (transport, crash): it
        takes nothing new until a heartbeat answers again."""
        worker = self._workers.get(address)
        if worker is None or (not worker.healthy and worker.state is AgentState.DEGRADED):
            return
        worker.healthy = False
        worker.state = AgentState.DEGRADED
        self._changed()

    def mark_model(self, address: str, model: ModelOnAgent) -> None:
        """What the proxy itself learnt (a LoadModel stream said READY) before the
        next heartbeat says so. A model marked draining stays so, whatever heartbeats
        say, until :meth:`forget_model` (or another mark): the proxy is unloading it."""
        worker = self._workers.get(address)
        if worker is None:
            return
        worker.models[model.model] = model
        if model.state == "draining":
            worker.unloading.add(model.model)
        else:
            worker.unloading.discard(model.model)
        worker.local_changes += 1
        worker.model_first_seen.setdefault(model.model, time.time())
        if model.state == "ready" and worker.healthy:
            worker.state = AgentState.READY
        self._changed()

    def forget_model(self, address: str, model: str) -> None:
        worker = self._workers.get(address)
        if worker is None:
            return
        worker.unloading.discard(model)
        if worker.models.pop(model, None) is not None:
            worker.local_changes += 1
            self._changed()

    def candidates(
        self, model: str, exclude: Iterable[str] = (), role: WorkerRole | None = None
    ) -> list[WorkerView]:
        """Agents that have ``model`` READY and take requests now; of ``role`` only,
        when given (None: any role)."""
        skip = set(exclude)
        # Cheapest tests first: this runs for every request, up to three times.
        return [
            w
            for w in self._workers.values()
            if (role is None or w.role is role)
            and w.is_ready(model)
            and w.address not in skip
            and w.routable
        ]

    def holders(self, model: str) -> list[WorkerView]:
        """Agents where ``model`` is loading or ready."""
        return [
            w
            for w in self._workers.values()
            if model in w.models and w.models[model].state in ("loading", "ready", "downloading")
        ]

    def pick(self, model: str, exclude: Iterable[str] = ()) -> str:
        """The least outstanding ``both`` agent with ``model`` READY, to serve it whole
        (prefill-only and decode-only agents refuse Generate)."""
        candidates = self.candidates(model, exclude, WorkerRole.BOTH)
        if not candidates:
            if any(model in w.known_models for w in self._workers.values()):
                raise UnavailableError(f"model {model} has no healthy ready replica right now")
            raise NotFoundError(f"The model `{model}` does not exist")
        return _least_outstanding(candidates).address

    def pick_disaggregated(self, model: str, exclude: Iterable[str] = ()) -> tuple[str, str] | None:
        """(prefill agent, decode agent) for ``model`` when it is READY in both a
        prefill pool and a decode pool, else None (one agent serves it whole). Each is
        the least outstanding of its pool: prefill and decode load differ too much for
        one pool's cache affinity to say anything about the other's."""
        prefill = self.candidates(model, exclude, WorkerRole.PREFILL)
        decode = self.candidates(model, exclude, WorkerRole.DECODE)
        if not prefill or not decode:
            return None
        return _least_outstanding(prefill).address, _least_outstanding(decode).address

    def prefill_pools(self, address: str) -> dict[str, list[PrefillPeer]] | None:
        """What the heartbeat to ``address`` hands it when it is a decode-role agent: for
        each model it holds, the prefill agents with the model READY that take requests
        now, with their load for it (a model with none is left out). None for an agent
        of another role (or one not heard from yet): its heartbeat carries no pools."""
        worker = self._workers.get(address)
        if worker is None or worker.role is not WorkerRole.DECODE:
            return None
        pools: dict[str, list[PrefillPeer]] = {}
        for model in worker.models:
            peers = []
            for agent in self.candidates(model, role=WorkerRole.PREFILL):
                if agent.state is AgentState.DRAINING:
                    continue
                held = agent.models[model]
                peers.append(
                    PrefillPeer(agent.address, held.running, held.waiting, held.kv_cache_usage)
                )
            if peers:
                pools[model] = sorted(peers, key=lambda p: p.address)
        return pools

    def pick_role(self, model: str, role: WorkerRole, exclude: Iterable[str] = ()) -> str | None:
        """The least outstanding agent of ``role`` with ``model`` READY, or None."""
        candidates = self.candidates(model, exclude, role)
        return _least_outstanding(candidates).address if candidates else None

    @contextmanager
    def lease(self, address: str) -> Iterator[None]:
        """Count a request as outstanding on ``address`` while it runs."""
        worker = self._workers[address]
        worker.outstanding += 1
        try:
            yield
        finally:
            worker.outstanding -= 1

    def models(self) -> dict[str, tuple[int, float]]:
        """Every model any agent knows -> (ready replicas, first seen Unix time)."""
        result: dict[str, tuple[int, float]] = {}
        for worker in self._workers.values():
            for model in worker.known_models:
                ready, first = result.get(model, (0, float("inf")))
                is_ready = worker.healthy and model in worker.ready_models
                result[model] = (
                    ready + int(is_ready),
                    min(first, worker.model_first_seen.get(model, first)),
                )
        return result


@dataclass(frozen=True)
class WorkerStatus:
    """What one heartbeat says."""

    worker_id: str
    ready_models: tuple[str, ...]
    known_models: tuple[str, ...]
    healthy: bool
    models: tuple[ModelOnAgent, ...] = ()
    state: AgentState | None = None
    memory_total: int = 0
    memory_free: int = 0
    memory_source: str = ""
    queue_depth: int = 0
    role: WorkerRole = WorkerRole.BOTH
    # What the worker's node storaged holds: model id -> fastest tier.
    stored: dict[str, CacheLevel] = field(default_factory=dict)
    # What the worker served itself (its InferenceService), per model, cumulative.
    served: dict[str, ServedTotals] = field(default_factory=dict)
    # Tokens it served itself per API key (by fingerprint), cumulative.
    key_tokens: dict[str, int] = field(default_factory=dict)
    # The port of its OpenAI REST endpoint (same host), 0: none; the endpoint's Unix
    # socket on the worker's host, "": none.
    rest_port: int = 0
    rest_socket: str = ""


class WorkerConnection(Protocol):
    """How the proxy talks to one worker."""

    def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]: ...

    async def prefill(self, job: Job, deadline_s: float | None) -> PrefillResult:
        """The prompt's first step and where its KV cache is parked."""
        ...

    async def embed(self, job: EmbeddingJob, deadline_s: float | None) -> EmbeddingResult:
        """The embeddings of ``job`` from the worker's InferenceService."""
        ...

    def decode(
        self,
        job: Job,
        kv_handle: str,
        prefill_worker: str,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        """The steps after the first, continuing from a parked KV cache."""
        ...

    async def heartbeat(
        self,
        deadline_s: float,
        prefill_pools: Mapping[str, Sequence[PrefillPeer]] | None = None,
        adapters: Sequence[Adapter] | None = None,
    ) -> WorkerStatus:
        """The worker's state; ``prefill_pools`` (a decode-role worker's, see
        :meth:`WorkerPool.prefill_pools`) and ``adapters`` (its adapter table, see
        proxy.adapters) go with the call, None sends none. Callers pass ``adapters``
        only when there is a table (a mesh without adapters sends none)."""
        ...

    async def disconnected(self) -> None:
        """Return once the connection to the worker, after it was up, goes down (its
        process ended, its host reset the connection, it is draining); wait while it has
        never been up or stays up. Cancellable."""
        ...

    def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        """The model's states ("loading", "ready", ...) as the worker reports them."""
        ...

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        """Unload ``model``; ``keep_asleep``: keep it asleep where its engine can sleep."""
        ...

    async def close(self) -> None: ...
