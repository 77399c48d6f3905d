"""The fleet state: which agents take requests, and the proxy's own pick (domain)."""

from __future__ import annotations

import pytest

from proxy.discovery import StaticDiscovery
from proxy.fleet import AgentState, ModelOnAgent, WorkerPool
from runtime.errors import NotFoundError, UnavailableError


def beat(pool: WorkerPool, address: str, ready: list[str], known: list[str] | None = None) -> None:
    pool.record_heartbeat(
        address,
        worker_id=address,
        ready_models=ready,
        known_models=known or ready,
        healthy=True,
        now=100.0,
    )


def test_unknown_model_is_not_found() -> None:
    pool = WorkerPool(["a"])
    beat(pool, "a", ["m"])
    with pytest.raises(NotFoundError, match="`x` does not exist"):
        pool.pick("x")


def test_least_outstanding_wins() -> None:
    pool = WorkerPool(["a", "b"])
    beat(pool, "a", ["m"])
    beat(pool, "b", ["m"])
    with pool.lease("a"):
        assert pool.pick("m") == "b"
        with pool.lease("b"), pool.lease("b"):
            assert pool.pick("m") == "a"
    assert pool.view("a").outstanding == 0


def test_only_workers_with_the_model_ready() -> None:
    pool = WorkerPool(["a", "b"])
    beat(pool, "a", ["m"])
    beat(pool, "b", [], known=["m"])  # loading there
    with pool.lease("a"), pool.lease("a"):
        assert pool.pick("m") == "a"


def test_the_first_failed_heartbeat_takes_a_worker_out_until_the_next_good_one() -> None:
    pool = WorkerPool(["a"])
    beat(pool, "a", ["m"])
    changes: list[bool] = []
    pool.subscribe(lambda: changes.append(pool.view("a").routable))
    pool.record_failure("a")
    assert changes == [False]  # observers (Envoy's endpoints) hear of it at once
    assert pool.view("a").state is AgentState.DEGRADED
    with pytest.raises(UnavailableError):
        pool.pick("m")
    pool.record_failure("a")  # still out: nothing new to tell
    assert changes == [False]
    beat(pool, "a", ["m"])
    assert changes == [False, True]
    assert pool.pick("m") == "a"


def test_a_model_being_unloaded_stays_draining_whatever_heartbeats_say() -> None:
    """A heartbeat answered before the worker starts the drain still says READY: taken
    at its word, it would route requests to a model on its way out (issue 13)."""
    pool = WorkerPool(["a"])
    beat(pool, "a", ["m"])
    pool.mark_model("a", ModelOnAgent("m", "draining"))
    beat(pool, "a", ["m"])
    assert pool.view("a").models["m"].state == "draining"
    assert not pool.view("a").is_ready("m")
    pool.forget_model("a", "m")
    beat(pool, "a", ["m"])  # loaded again since: READY counts again
    assert pool.view("a").is_ready("m")
    pool.mark_model("a", ModelOnAgent("m", "draining"))
    pool.mark_model("a", ModelOnAgent("m", "loading"))  # a new load there ends the unload
    beat(pool, "a", ["m"])
    assert pool.view("a").is_ready("m")


def test_models_counts_ready_replicas() -> None:
    pool = WorkerPool(["a", "b"])
    beat(pool, "a", ["m", "n"])
    beat(pool, "b", ["m"], known=["m", "n"])
    assert pool.models() == {"m": (2, 100.0), "n": (1, 100.0)}


def test_empty_static_discovery_is_rejected() -> None:
    with pytest.raises(ValueError):
        StaticDiscovery([])
