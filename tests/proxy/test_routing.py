"""The worker pool's routing decisions (domain)."""

from __future__ import annotations

import pytest

from proxy.discovery import StaticDiscovery
from proxy.routing import UNHEALTHY_AFTER_FAILURES, WorkerPool
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


def test_failures_make_a_worker_unhealthy_until_next_heartbeat() -> None:
    pool = WorkerPool(["a"])
    beat(pool, "a", ["m"])
    for _ in range(UNHEALTHY_AFTER_FAILURES):
        pool.record_failure("a")
    with pytest.raises(UnavailableError):
        pool.pick("m")
    beat(pool, "a", ["m"])
    assert pool.pick("m") == "a"


def test_models_counts_ready_replicas() -> None:
    pool = WorkerPool(["a", "b"])
    beat(pool, "a", ["m", "n"])
    beat(pool, "b", ["m"], known=["m", "n"])
    assert pool.models() == {"m": (2, 100.0), "n": (1, 100.0)}


def test_empty_static_discovery_is_rejected() -> None:
    with pytest.raises(ValueError):
        StaticDiscovery([])
