"""What Envoy should know of the fleet: an immutable snapshot of the warm routes.

Domain only (no protobuf); :mod:`proxy.xds_server` turns a snapshot into Envoy's
clusters (CDS), endpoints (EDS) and routes (RDS).

For every model that has at least one *routable* endpoint -- the model READY on an
agent that is healthy, neither DRAINING nor DEGRADED, and serves whole requests -- the
snapshot holds one :class:`ModelRoute`: the model's cluster name, its endpoints (host,
port, a weight >= 1 from the agent's heartbeat load, a health) and its load-balancing
policy. A model without a routable endpoint has no route at all: its requests fall
through to the edge's base routes, which send them to the proxy's cold path.

Who serves whole requests (disaggregated serving): ``both`` agents on their own; and,
for a model with a *prefill pool* (READY on a routable ``prefill`` agent), its
``decode`` agents, which run each request's Prefill on that pool themselves (the
control plane hands them the pool in every heartbeat: worker/disagg.py) -- no proxy
in the path. ``prefill`` agents are never endpoints. A model with both kinds of
endpoint is routed to its decode pool only, as the proxy's cold path prefers the
disaggregated pair: an operator who gave a model prefill and decode pools wants its
time to first token and its decode rate apart; its ``both`` agents take over the moment
the P/D pools stop serving (no prefill or no decode agent left), within a push.

Endpoints of an agent that still holds the model READY but is draining are listed as
DRAINING (Envoy sends them nothing new; its operator sees them), as long as the model
has a routable endpoint somewhere. Unreachable (DEGRADED) agents are left out.

A LoRA adapter (proxy.adapters) has a route under each of its names (its id and
``<base>:<adapter>``): the ``both`` agents with its base READY that know it from their
adapter table, the ones holding it already at a higher weight.

Two snapshots compare equal exactly when Envoy would be told the same thing: the
control plane pushes only when a new snapshot differs from the last one.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from proxy.adapters import NON_HOLDER_WEIGHT_DIVISOR, Adapter
from proxy.fleet import AgentState, WorkerRole, WorkerView
from runtime.edge_names import PREFIX_HASH_HEADER

CLUSTER_PREFIX = "helios-model-"
# The sanitised model id part of a cluster name is cut to this many characters.
CLUSTER_MODEL_CHARS = 40
# Bounded load for prefix-aware hashing: no endpoint takes more than 150% of the mean
# load (Envoy's hash_balance_factor, in percent); the rest spill over to the next host
# on the ring.
PREFIX_HASH_BALANCE_FACTOR = 150
# Weights: an idle endpoint weighs WEIGHT_MAX; load (KV cache in use, queued requests)
# brings it down to no less than 1. Few levels, so that small load changes do not make
# a push every heartbeat.
WEIGHT_MAX = 10

_NOT_CLUSTER_CHAR = re.compile(r"[^a-z0-9]")


def cluster_name(model: str) -> str:
    """The Envoy cluster name of ``model``'s endpoints: ``helios-model-`` + the model id
    lower-cased with every character outside [a-z0-9] replaced by ``-``, cut to 40
    characters, + ``-`` + the first 8 hex digits of the id's SHA-256 (ids that
    sanitise alike stay apart)."""
    readable = _NOT_CLUSTER_CHAR.sub("-", model.lower())[:CLUSTER_MODEL_CHARS]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{CLUSTER_PREFIX}{readable}-{digest}"


class LbKind(enum.StrEnum):
    """How Envoy picks one of a model's endpoints."""

    LEAST_REQUEST = "least_request"  # weighted least request (power of two choices)
    RING_HASH = "ring_hash"  # consistent hashing on a request header
    MAGLEV = "maglev"  # consistent hashing, Maglev table


@dataclass(frozen=True)
class LbPolicy:
    """A model's load balancing: the kind, the header hashed (hashing kinds), and the
    bounded-load factor in percent (0: unbounded)."""

    kind: LbKind = LbKind.LEAST_REQUEST
    hash_header: str = ""
    hash_balance_factor: int = 0

    def __post_init__(self) -> None:
        hashing = self.kind is not LbKind.LEAST_REQUEST
        if hashing != bool(self.hash_header):
            raise ValueError(f"{self.kind} needs a hash header exactly when it hashes")
        if self.hash_header != self.hash_header.lower():
            raise ValueError(f"header names are lower case: {self.hash_header!r}")
        if self.hash_balance_factor and (not hashing or self.hash_balance_factor < 100):
            raise ValueError("hash_balance_factor is >= 100 and for hashing kinds only")


LEAST_REQUEST = LbPolicy()


# The routing policies an operator names (``--routing-policy``).
LEAST_OUTSTANDING = "least-outstanding"
PREFIX_AWARE = "prefix-aware"
SESSION_AFFINITY = "session-affinity"
ROUTING_POLICIES = (LEAST_OUTSTANDING, PREFIX_AWARE, SESSION_AFFINITY)
# The request header carrying a session id (session affinity).
DEFAULT_SESSION_HEADER = "x-session-id"


def lb_policy_for(routing_policy: str, *, session_header: str = DEFAULT_SESSION_HEADER) -> LbPolicy:
    """The Envoy policy of a routing policy's name: least-outstanding -> least request;
    prefix-aware -> ring hash on the prefix-hash header with bounded load;
    session-affinity -> Maglev on the session header (unbounded: a session stays where
    its cache is). Requests without the hashed header go to a random endpoint."""
    if routing_policy == LEAST_OUTSTANDING:
        return LEAST_REQUEST
    if routing_policy == PREFIX_AWARE:
        return LbPolicy(LbKind.RING_HASH, PREFIX_HASH_HEADER, PREFIX_HASH_BALANCE_FACTOR)
    if routing_policy == SESSION_AFFINITY:
        return LbPolicy(LbKind.MAGLEV, session_header.lower())
    raise ValueError(f"unknown routing policy {routing_policy!r}; one of {ROUTING_POLICIES}")


class EndpointHealth(enum.StrEnum):
    HEALTHY = "healthy"
    DRAINING = "draining"


@dataclass(frozen=True)
class Endpoint:
    """One agent serving one model."""

    address: str  # as discovery names the agent (host:port)
    host: str
    port: int
    weight: int
    health: EndpointHealth = EndpointHealth.HEALTHY
    # Envoy's priority level: 0 first; Envoy moves traffic to 1 as level 0 loses
    # healthy hosts (the `both` workers standing by for a model's decode pool).
    priority: int = 0
    # The agent's REST endpoint on ``host`` (streamed REST requests), 0: none.
    rest_port: int = 0
    rest_socket: str = ""  # the worker's REST endpoint's Unix socket ("": none)


@dataclass(frozen=True)
class ModelRoute:
    """One model's cluster: its endpoints (by address) and policy."""

    model: str
    cluster: str
    endpoints: tuple[Endpoint, ...]
    policy: LbPolicy = LEAST_REQUEST


@dataclass(frozen=True)
class XdsSnapshot:
    """Every model with a routable endpoint, by model id."""

    routes: tuple[ModelRoute, ...] = ()
    # API keys whose tokens-per-minute budget is spent (proxy.key_budget_routes).
    throttled_keys: tuple[str, ...] = ()

    def by_cluster(self) -> dict[str, ModelRoute]:
        return {r.cluster: r for r in self.routes}

    def by_model(self) -> dict[str, ModelRoute]:
        return {r.model: r for r in self.routes}


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if malformed."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"not host:port: {address!r}")
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range: {address!r}")
    return host, number


def endpoint_weight(kv_cache_usage: float, waiting: int) -> int:
    """WEIGHT_MAX for an idle endpoint, down to 1 as its KV cache fills and requests
    queue (Envoy already balances the requests it sends itself; the weight carries what
    it does not see: cache pressure and requests from elsewhere)."""
    free = min(max(1.0 - kv_cache_usage, 0.0), 1.0) / (1 + max(waiting, 0))
    return max(1, math.ceil(WEIGHT_MAX * free - 1e-9))


def _serves(agent: WorkerView, model: str) -> EndpointHealth | None:
    """The health of ``agent`` for ``model`` whatever its role, None when it must not be
    listed."""
    if not agent.is_ready(model):
        return None
    if not agent.healthy or agent.state is AgentState.DEGRADED:
        return None
    if agent.state is AgentState.DRAINING:
        return EndpointHealth.DRAINING
    return EndpointHealth.HEALTHY


def build_snapshot(
    agents: Iterable[WorkerView],
    policy_for: Callable[[str], LbPolicy] | Mapping[str, LbPolicy] | None = None,
) -> XdsSnapshot:
    """The snapshot of ``agents``; ``policy_for`` gives a model's policy (a callable, a
    mapping with least request for models it lacks, or None: least request for all).
    Agents whose address is not ``host:port`` are left out (they cannot be dialled)."""
    agents = list(agents)
    prefill_pooled = {
        model
        for agent in agents
        if agent.role is WorkerRole.PREFILL
        for model in agent.models
        if _serves(agent, model) is EndpointHealth.HEALTHY
    }
    # Per role that serves whole requests: model -> its endpoints.
    endpoints: dict[WorkerRole, dict[str, list[Endpoint]]] = {
        WorkerRole.BOTH: {},
        WorkerRole.DECODE: {},
    }
    for agent in agents:
        by_model = endpoints.get(agent.role)
        if by_model is None:
            continue
        try:
            host, port = split_address(agent.address)
        except ValueError:
            continue
        for model, held in agent.models.items():
            if agent.role is WorkerRole.DECODE and model not in prefill_pooled:
                continue
            health = _serves(agent, model)
            if health is None:
                continue
            weight = endpoint_weight(held.kv_cache_usage, held.waiting)
            by_model.setdefault(model, []).append(_endpoint(agent, host, port, weight, health))
    routes = []
    for model in sorted(endpoints[WorkerRole.BOTH].keys() | endpoints[WorkerRole.DECODE].keys()):
        listed = _prioritised(
            sorted(endpoints[WorkerRole.DECODE].get(model, ()), key=lambda e: e.address),
            sorted(endpoints[WorkerRole.BOTH].get(model, ()), key=lambda e: e.address),
        )
        if not listed:
            continue
        routes.append(
            ModelRoute(model, cluster_name(model), tuple(listed), _policy(policy_for, model))
        )
    taken = {r.model for r in routes}
    adapters = _adapter_endpoints(agents)
    # Adapter objects do not order: sort by their fields (a deterministic snapshot).
    for adapter in sorted(adapters, key=lambda a: (a.adapter, a.base, a.version)):
        listed = adapters[adapter]
        if not _healthy(listed):
            continue
        policy = _policy(policy_for, adapter.base)  # the base's: it serves the requests
        for name in adapter.names:
            if name not in taken:
                routes.append(ModelRoute(name, cluster_name(name), tuple(listed), policy))
    return XdsSnapshot(tuple(routes))


def _endpoint(
    agent: WorkerView, host: str, port: int, weight: int, health: EndpointHealth
) -> Endpoint:
    """``agent`` as an endpoint (at ``host:port``, its REST endpoint's port and socket)."""
    return Endpoint(
        agent.address,
        host,
        port,
        weight,
        health,
        rest_port=agent.rest_port,
        rest_socket=agent.rest_socket,
    )


def _adapter_endpoints(agents: Iterable[WorkerView]) -> dict[Adapter, list[Endpoint]]:
    """Each LoRA adapter's endpoints (proxy.adapters): the ``both`` agents with its base
    READY whose adapter table names it, those that hold it already weighing more."""
    endpoints: dict[Adapter, list[Endpoint]] = {}
    for agent in sorted(agents, key=lambda a: a.address):
        if agent.role is not WorkerRole.BOTH or not agent.adapter_table:
            continue
        try:
            host, port = split_address(agent.address)
        except ValueError:
            continue
        for adapter in agent.adapter_table:
            health = _serves(agent, adapter.base)
            if health is None:
                continue
            base = agent.models[adapter.base]
            weight = endpoint_weight(base.kv_cache_usage, base.waiting)
            if adapter.adapter not in base.adapters:
                weight = max(1, weight // NON_HOLDER_WEIGHT_DIVISOR)
            endpoints.setdefault(adapter, []).append(_endpoint(agent, host, port, weight, health))
    return endpoints


def _healthy(endpoints: Iterable[Endpoint]) -> bool:
    return any(e.health is EndpointHealth.HEALTHY for e in endpoints)


def _prioritised(decode: list[Endpoint], both: list[Endpoint]) -> list[Endpoint]:
    """A model's endpoints by priority: its decode pool first and the ``both`` workers
    standing by at priority 1 (Envoy fails over to them the moment decode workers are
    ejected, before the control plane hears of it); without a decode worker taking
    requests, the ``both`` workers alone. Empty when neither has a healthy endpoint."""
    if _healthy(decode):
        return decode + [dataclasses.replace(e, priority=1) for e in both]
    return both if _healthy(both) else []


def _policy(
    policy_for: Callable[[str], LbPolicy] | Mapping[str, LbPolicy] | None, model: str
) -> LbPolicy:
    if policy_for is None:
        return LEAST_REQUEST
    if isinstance(policy_for, Mapping):
        return policy_for.get(model, LEAST_REQUEST)
    return policy_for(model)
