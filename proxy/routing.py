"""The agent registry: every worker as the proxy knows it from heartbeats and requests.

Domain only. Each worker is an *agent* with a state (IDLE, DOWNLOADING, LOADING, READY,
DRAINING, DEGRADED), the models it holds (state, cache level, load), its memory as it
declares it (the GPU's own figure where a worker has one, otherwise its configured
capacity: that is the figure placement uses), and a per-agent circuit breaker fed by
request outcomes. Which READY replica serves a request is a pluggable policy
(:mod:`proxy.policies`); where a cold model goes is :mod:`proxy.placement`.

Every agent also reports what its node's storaged holds (model -> fastest tier), so
placement can prefer an agent that loads a model from local RAM or NVMe over one that
has to download it (:meth:`WorkerView.cache_level`).

Every agent also has a role from its heartbeat (disaggregated serving): ``both`` agents
serve whole generations and are the only ones :meth:`WorkerPool.pick` returns;
``prefill`` and ``decode`` agents form a model's prefill and decode pools, which
:meth:`WorkerPool.pick_disaggregated` pairs up (see :mod:`proxy.disagg`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from proxy.policies import LeastOutstanding, RouteHint, RoutingPolicy
from runtime.errors import NotFoundError, UnavailableError

# A worker whose heartbeats failed this many times in a row takes no new requests
# until a heartbeat succeeds again.
UNHEALTHY_AFTER_FAILURES = 2


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

    GPU = "gpu"
    RAM = "ram"
    NVME = "nvme"
    REMOTE = "remote"


class CircuitState(enum.StrEnum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive request failures open the circuit; after ``reset_after`` seconds one
    probe request is let through (half-open): its success closes the circuit, its
    failure opens it again."""

    def __init__(self, failure_threshold: int = 3, reset_after: float = 5.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.failures = 0
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float | None = None) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        now = time.monotonic() if now is None else now
        if now - self._opened_at >= self.reset_after:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allows(self, now: float | None = None) -> bool:
        """Whether a new request may go to this agent now (no side effect)."""
        state = self.state(now)
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and not self._probing
        )

    def on_dispatch(self, now: float | None = None) -> None:
        """A request is sent: in half-open it is the one probe."""
        if self.state(now) is CircuitState.HALF_OPEN:
            self._probing = True

    def record_success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        self._probing = False
        if self.failures >= self.failure_threshold or self._opened_at is not None:
            self._opened_at = now

    def record_neutral(self) -> None:
        """A request ended in a way that says nothing of the agent (the client's own
        error, the client gone): nothing is counted, but a half-open probe that ended so
        lets the next request probe (else the circuit would never close again)."""
        self._probing = False


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
    consecutive_failures: int = 0
    last_heartbeat: float = 0.0
    memory_total: int = 0
    memory_free: int = 0
    memory_source: str = ""
    queue_depth: int = 0
    # Bytes promised to loads in flight (not yet in the agent's own figure).
    reserved: int = 0
    model_first_seen: dict[str, float] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    # What the node's storaged holds: lower-cased model id -> its fastest tier.
    stored: dict[str, CacheLevel] = field(default_factory=dict)

    def cache_level(self, model: str) -> CacheLevel:
        """Where ``model``'s weights are on this agent: GPU when it is loaded (or being
        loaded), else the fastest tier its storaged holds them in, else REMOTE. Model ids
        compare case-insensitively (storaged reports the registry's lower-case ids)."""
        held = self.models.get(model)
        if held is not None and held.state != "failed":
            return CacheLevel.GPU
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
        """Takes new requests: heartbeats succeed and the circuit lets requests in."""
        return self.healthy and self.breaker.allows()

    @property
    def placeable_free(self) -> int:
        """Free memory for a new model: the declared free figure less reservations."""
        return self.memory_free - self.reserved


def _least_outstanding(candidates: Sequence[WorkerView]) -> WorkerView:
    return min(candidates, key=lambda w: (w.outstanding, w.address))


class WorkerPool:
    """The agents discovery knows (a static list by default, see :mod:`proxy.discovery`)."""

    def __init__(
        self,
        addresses: Iterable[str] = (),
        *,
        policy: RoutingPolicy | None = None,
        breaker_threshold: int = 3,
        breaker_reset_s: float = 5.0,
    ) -> None:
        self._breaker_threshold = breaker_threshold
        self._breaker_reset_s = breaker_reset_s
        self._workers: dict[str, WorkerView] = {}
        self._observers: list[Callable[[], None]] = []
        for address in addresses:
            self.add(address)
        self.policy: RoutingPolicy = policy or LeastOutstanding()

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` after every change of the fleet state (agent added or
        removed, heartbeat or heartbeat failure, model state learnt or forgotten, request
        failure); returns the function that unsubscribes it. Observers run synchronously
        inside the change and must be cheap and not block (e.g. schedule work on the
        loop); they may be called when nothing they care about changed."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _changed(self) -> None:
        for observer in list(self._observers):
            observer()

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
            self._workers[address] = WorkerView(
                address=address,
                breaker=CircuitBreaker(self._breaker_threshold, self._breaker_reset_s),
            )
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
    ) -> None:
        """A heartbeat answered. ``models`` (full detail) wins over the name lists.
        ``stored`` is what the agent's storaged holds (model -> fastest tier)."""
        worker = self._workers[address]
        now = time.time() if now is None else now
        if models is None:
            ready = set(ready_models)
            models = [
                ModelOnAgent(m, "ready" if m in ready else "loading")
                for m in {*known_models, *ready}
            ]
        worker.worker_id = worker_id
        worker.models = {m.model: m for m in models}
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
        worker.consecutive_failures = 0
        worker.last_heartbeat = now
        self._changed()

    def record_failure(self, address: str) -> None:
        """A heartbeat to ``address`` failed at the transport level."""
        worker = self._workers.get(address)
        if worker is None:
            return
        worker.consecutive_failures += 1
        if worker.consecutive_failures >= UNHEALTHY_AFTER_FAILURES:
            worker.healthy = False
            worker.state = AgentState.DEGRADED
            self._changed()

    def record_request_failure(self, address: str) -> None:
        """A request to ``address`` failed because of the agent (transport, crash): it
        takes nothing new until a heartbeat answers again, and its breaker counts it."""
        worker = self._workers.get(address)
        if worker is None:
            return
        worker.healthy = False
        worker.state = AgentState.DEGRADED
        worker.breaker.record_failure()
        self._changed()

    def record_request_success(self, address: str) -> None:
        worker = self._workers.get(address)
        if worker is not None:
            worker.breaker.record_success()

    def record_request_neutral(self, address: str) -> None:
        """A request to ``address`` ended with the request's own fault (INVALID_ARGUMENT,
        NOT_FOUND, ...) or its client leaving: not the agent's failure, never counted."""
        worker = self._workers.get(address)
        if worker is not None:
            worker.breaker.record_neutral()

    def mark_model(self, address: str, model: ModelOnAgent) -> None:
        """What the proxy itself learnt (a LoadModel stream said READY) before the
        next heartbeat says so."""
        worker = self._workers.get(address)
        if worker is None:
            return
        worker.models[model.model] = model
        worker.model_first_seen.setdefault(model.model, time.time())
        if model.state == "ready" and worker.healthy:
            worker.state = AgentState.READY
        self._changed()

    def forget_model(self, address: str, model: str) -> None:
        worker = self._workers.get(address)
        if worker is not None and worker.models.pop(model, None) is not None:
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

    def pick(self, model: str, hint: RouteHint | None = None, exclude: Iterable[str] = ()) -> str:
        """The address of the ``both`` agent that should serve ``model`` whole now
        (prefill-only and decode-only agents refuse Generate)."""
        candidates = self.candidates(model, exclude, WorkerRole.BOTH)
        if not candidates:
            if any(model in w.known_models for w in self._workers.values()):
                raise UnavailableError(f"model {model} has no healthy ready replica right now")
            raise NotFoundError(f"The model `{model}` does not exist")
        return self.policy.choose(candidates, hint or RouteHint()).address

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

    def pick_role(self, model: str, role: WorkerRole, exclude: Iterable[str] = ()) -> str | None:
        """The least outstanding agent of ``role`` with ``model`` READY, or None."""
        candidates = self.candidates(model, exclude, role)
        return _least_outstanding(candidates).address if candidates else None

    @contextmanager
    def lease(self, address: str) -> Iterator[None]:
        """Count a request as outstanding on ``address`` while it runs."""
        worker = self._workers[address]
        worker.outstanding += 1
        worker.breaker.on_dispatch()
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
