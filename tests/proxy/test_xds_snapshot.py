"""The xDS snapshot (domain): which models get a cluster, with which endpoints and policy."""

from __future__ import annotations

import hashlib

import pytest

from proxy.fleet import AgentState, ModelOnAgent, WorkerPool, WorkerRole
from proxy.xds_snapshot import (
    LEAST_REQUEST,
    PREFIX_HASH_BALANCE_FACTOR,
    PREFIX_HASH_HEADER,
    WEIGHT_MAX,
    Endpoint,
    EndpointHealth,
    LbKind,
    LbPolicy,
    build_snapshot,
    cluster_name,
    endpoint_weight,
    lb_policy_for,
    split_address,
)


def beat(
    pool: WorkerPool,
    address: str,
    *models: ModelOnAgent,
    state: AgentState = AgentState.READY,
    role: WorkerRole = WorkerRole.BOTH,
    healthy: bool = True,
) -> None:
    pool.add(address)
    pool.record_heartbeat(
        address, worker_id=address, healthy=healthy, models=list(models), state=state, role=role
    )


def test_cluster_name_is_sanitised_cut_and_hashed() -> None:
    digest = hashlib.sha256(b"Org/Llama-3.1_8B").hexdigest()[:8]
    assert cluster_name("Org/Llama-3.1_8B") == f"helios-model-org-llama-3-1-8b-{digest}"
    long = "a" * 100
    name = cluster_name(long)
    assert name == f"helios-model-{'a' * 40}-{hashlib.sha256(long.encode()).hexdigest()[:8]}"
    # Ids that sanitise alike stay apart.
    assert cluster_name("org/m") != cluster_name("org.m")
    assert cluster_name("Org/M") != cluster_name("org/m")


def test_only_ready_models_on_routable_both_agents_get_endpoints() -> None:
    pool = WorkerPool()
    beat(pool, "10.0.0.1:50051", ModelOnAgent("m", "ready"), ModelOnAgent("cold", "loading"))
    beat(pool, "10.0.0.2:50051", ModelOnAgent("m", "ready"), state=AgentState.DRAINING)
    beat(pool, "10.0.0.3:50051", ModelOnAgent("m", "ready"), healthy=False)
    # A prefill agent is never an endpoint; a decode agent only for a model that has a
    # prefill pool (test below).
    beat(pool, "10.0.0.4:50051", ModelOnAgent("prefill-only", "ready"), role=WorkerRole.PREFILL)
    beat(pool, "10.0.0.5:50051", ModelOnAgent("m", "ready"), role=WorkerRole.DECODE)
    beat(pool, "10.0.0.6:50051", ModelOnAgent("only-draining", "ready"), state=AgentState.DRAINING)
    snapshot = build_snapshot(pool.agents())
    assert [r.model for r in snapshot.routes] == ["m"]
    (route,) = snapshot.routes
    assert route.cluster == cluster_name("m")
    assert route.policy == LEAST_REQUEST
    assert route.endpoints == (
        Endpoint("10.0.0.1:50051", "10.0.0.1", 50051, WEIGHT_MAX, EndpointHealth.HEALTHY),
        Endpoint("10.0.0.2:50051", "10.0.0.2", 50051, WEIGHT_MAX, EndpointHealth.DRAINING),
    )


def test_a_model_with_prefill_and_decode_pools_is_routed_to_its_decode_agents() -> None:
    pool = WorkerPool()
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready"), role=WorkerRole.PREFILL)
    beat(pool, "10.0.0.2:1", ModelOnAgent("m", "ready"), role=WorkerRole.DECODE)
    beat(
        pool,
        "10.0.0.3:1",
        ModelOnAgent("m", "ready"),
        role=WorkerRole.DECODE,
        state=AgentState.DRAINING,
    )
    beat(pool, "10.0.0.4:1", ModelOnAgent("m", "ready"), ModelOnAgent("whole", "ready"))
    beat(pool, "10.0.0.5:1", ModelOnAgent("no-prefill-pool", "ready"), role=WorkerRole.DECODE)

    def endpoints(model: str, priority: int = 0) -> list[tuple[str, EndpointHealth]]:
        route = build_snapshot(pool.agents()).by_model().get(model)
        listed = [] if route is None else route.endpoints
        return [(e.address, e.health) for e in listed if e.priority == priority]

    # The decode pool first, the both agent standing by at priority 1 (Envoy fails over
    # to it as decode agents are ejected); a decode agent of a model without a prefill
    # pool serves nothing whole.
    assert endpoints("m") == [
        ("10.0.0.2:1", EndpointHealth.HEALTHY),
        ("10.0.0.3:1", EndpointHealth.DRAINING),
    ]
    assert endpoints("m", priority=1) == [("10.0.0.4:1", EndpointHealth.HEALTHY)]
    assert endpoints("whole", priority=1) == []
    assert endpoints("whole") == [("10.0.0.4:1", EndpointHealth.HEALTHY)]
    assert endpoints("no-prefill-pool") == []
    # The prefill pool gone: the both agent takes the model over.
    pool.record_request_failure("10.0.0.1:1")
    assert endpoints("m") == [("10.0.0.4:1", EndpointHealth.HEALTHY)]
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready"), role=WorkerRole.PREFILL)
    assert endpoints("m")[0] == ("10.0.0.2:1", EndpointHealth.HEALTHY)
    # No decode agent taking requests (only a draining one left): the both agent again.
    pool.record_request_failure("10.0.0.2:1")
    assert endpoints("m") == [("10.0.0.4:1", EndpointHealth.HEALTHY)]


def test_a_degraded_agent_leaves_and_the_last_endpoint_takes_the_model_with_it() -> None:
    pool = WorkerPool()
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready"))
    assert build_snapshot(pool.agents()).by_model()["m"].endpoints[0].port == 1
    pool.record_request_failure("10.0.0.1:1")
    assert build_snapshot(pool.agents()).routes == ()


def test_weights_follow_load_and_stay_at_least_one() -> None:
    assert endpoint_weight(0.0, 0) == WEIGHT_MAX
    assert endpoint_weight(0.5, 0) == WEIGHT_MAX // 2
    assert endpoint_weight(0.0, 1) == WEIGHT_MAX // 2
    assert endpoint_weight(1.0, 50) == 1
    assert endpoint_weight(1.5, -3) == 1
    pool = WorkerPool()
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready", kv_cache_usage=0.75, waiting=1))
    (endpoint,) = build_snapshot(pool.agents()).routes[0].endpoints
    assert 1 <= endpoint.weight < WEIGHT_MAX


def test_equal_fleets_make_equal_snapshots() -> None:
    first, second = WorkerPool(), WorkerPool()
    beat(first, "10.0.0.1:1", ModelOnAgent("a", "ready"), ModelOnAgent("b", "ready"))
    beat(first, "10.0.0.2:1", ModelOnAgent("a", "ready"))
    # Other order, other bookkeeping (outstanding, heartbeat time): same snapshot.
    beat(second, "10.0.0.2:1", ModelOnAgent("a", "ready"))
    beat(second, "10.0.0.1:1", ModelOnAgent("b", "ready"), ModelOnAgent("a", "ready"))
    second.view("10.0.0.1:1").outstanding = 5
    assert build_snapshot(first.agents()) == build_snapshot(second.agents())
    beat(second, "10.0.0.1:1", ModelOnAgent("b", "ready"), ModelOnAgent("a", "ready", waiting=3))
    assert build_snapshot(first.agents()) != build_snapshot(second.agents())


def test_policies_map_to_envoy_load_balancing() -> None:
    assert lb_policy_for("least-outstanding", session_header="x-s") == LEAST_REQUEST
    prefix = lb_policy_for("prefix-aware", session_header="x-s")
    assert prefix == LbPolicy(LbKind.RING_HASH, PREFIX_HASH_HEADER, PREFIX_HASH_BALANCE_FACTOR)
    assert lb_policy_for("session-affinity", session_header="X-Session-Id") == LbPolicy(
        LbKind.MAGLEV, "x-session-id"
    )
    with pytest.raises(ValueError):
        lb_policy_for("round-robin", session_header="x-s")
    with pytest.raises(ValueError):
        LbPolicy(LbKind.RING_HASH)  # hashing needs a header
    with pytest.raises(ValueError):
        LbPolicy(LbKind.LEAST_REQUEST, hash_balance_factor=150)
    pool = WorkerPool()
    beat(pool, "10.0.0.1:1", ModelOnAgent("a", "ready"), ModelOnAgent("b", "ready"))
    snapshot = build_snapshot(pool.agents(), {"b": prefix})
    assert snapshot.by_model()["a"].policy == LEAST_REQUEST
    assert snapshot.by_model()["b"].policy == prefix
    assert build_snapshot(pool.agents(), lambda model: prefix).by_model()["a"].policy == prefix


def test_addresses() -> None:
    assert split_address("10.0.0.1:50051") == ("10.0.0.1", 50051)
    assert split_address("[fd00::1]:7") == ("fd00::1", 7)
    assert split_address("worker-0.helios:50051") == ("worker-0.helios", 50051)
    for bad in ("nohost", ":1", "h:0", "h:99999", "h:x", "[::1:5"):
        with pytest.raises(ValueError):
            split_address(bad)
    pool = WorkerPool()
    beat(pool, "not-an-address", ModelOnAgent("m", "ready"))
    assert build_snapshot(pool.agents()).routes == ()


def test_the_pool_tells_its_observers_of_every_change() -> None:
    pool = WorkerPool()
    calls: list[int] = []
    unsubscribe = pool.subscribe(lambda: calls.append(1))
    pool.add("10.0.0.1:1")
    pool.add("10.0.0.1:1")  # known already: no change
    assert len(calls) == 1
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready"))
    pool.mark_model("10.0.0.1:1", ModelOnAgent("n", "ready"))
    pool.forget_model("10.0.0.1:1", "n")
    pool.forget_model("10.0.0.1:1", "n")  # gone already
    pool.record_failure("10.0.0.1:1")  # the first failure takes it out (DEGRADED)
    pool.record_failure("10.0.0.1:1")  # out already: no change
    pool.record_request_failure("10.0.0.1:1")
    beat(pool, "10.0.0.1:1", ModelOnAgent("m", "ready"))  # back
    pool.record_request_failure("10.0.0.1:1")  # a request failed there: out again
    pool.remove("10.0.0.1:1")
    pool.remove("10.0.0.1:1")
    assert len(calls) == 8
    unsubscribe()
    pool.add("10.0.0.2:1")
    assert len(calls) == 8
