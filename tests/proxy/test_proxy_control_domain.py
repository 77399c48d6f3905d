"""Placement, agents out of routing, API keys and limits (domain)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from prometheus_client import REGISTRY

from openai_compat.params import Job
from proxy.cold_path import ColdPath
from proxy.cold_start import ColdStarts, parse_model_spec
from proxy.fleet import ModelOnAgent, WorkerPool
from proxy.limits import QUEUE_FULL, RATE_LIMIT, Admission, ApiKeys, parse_key_spec
from proxy.placement import NoFit, best_fit, eviction_plan
from runtime.errors import ShedError, UnauthenticatedError


def pool_with(free: dict[str, int], total: int = 100) -> WorkerPool:
    pool = WorkerPool(free)
    for address, room in free.items():
        pool.record_heartbeat(
            address, worker_id=address, healthy=True, memory_total=total, memory_free=room
        )
    return pool


def test_best_fit_picks_the_tightest_agent_that_fits() -> None:
    pool = pool_with({"a": 90, "b": 40, "c": 20})
    choice = best_fit(pool.agents(), "m", 30)
    assert not isinstance(choice, NoFit) and choice.address == "b"
    pool.view("b").reserved = 15  # a load in flight there already
    choice = best_fit(pool.agents(), "m", 30)
    assert not isinstance(choice, NoFit) and choice.address == "a"


def test_best_fit_never_exceeds_capacity_and_says_why() -> None:
    pool = pool_with({"a": 10, "b": 20})
    no_room = best_fit(pool.agents(), "m", 50)
    assert isinstance(no_room, NoFit)
    assert "most free on any worker is 20 bytes" in no_room.reason("m")
    too_big = best_fit(pool.agents(), "m", 500)
    assert isinstance(too_big, NoFit) and "largest worker has 100 bytes" in too_big.reason("m")


def test_best_fit_skips_unhealthy_and_holders() -> None:
    pool = pool_with({"a": 90, "b": 90})
    pool.record_request_failure("a")
    pool.mark_model("b", ModelOnAgent("m", "ready"))
    assert isinstance(best_fit(pool.agents(), "m", 10), NoFit)


def test_eviction_plan_frees_least_recently_used_first() -> None:
    pool = pool_with({"a": 10})
    agent = pool.view("a")
    idle = [("old", 30, 1.0), ("new", 30, 5.0), ("mid", 30, 3.0)]
    assert eviction_plan(agent, 35, idle) == ["old"]
    assert eviction_plan(agent, 65, idle) == ["old", "mid"]
    assert eviction_plan(agent, 150, idle) is None
    assert eviction_plan(agent, 5, idle) == []


def test_request_failure_takes_an_agent_out_until_a_heartbeat() -> None:
    pool = pool_with({"a": 50, "b": 50})
    for address in ("a", "b"):
        pool.mark_model(address, ModelOnAgent("m", "ready"))
    pool.record_request_failure("a")
    assert pool.pick("m") == "b"
    pool.record_heartbeat(
        "a",
        worker_id="a",
        healthy=True,
        models=[ModelOnAgent("m", "ready")],
        memory_total=100,
        memory_free=50,
    )
    with pool.lease("b"):
        assert pool.pick("m") == "a"


def test_api_keys_and_request_rate() -> None:
    keys = ApiKeys([parse_key_spec("k1:2"), parse_key_spec("k2")])
    with pytest.raises(UnauthenticatedError):
        keys.admit(None)
    with pytest.raises(UnauthenticatedError):
        keys.admit("Bearer nope")
    assert keys.admit("Bearer k1") == "k1"
    keys.admit("Bearer k1")
    with pytest.raises(ShedError) as shed:
        keys.admit("Bearer k1")
    assert shed.value.reason == RATE_LIMIT
    assert shed.value.retry_after_s is not None and shed.value.retry_after_s > 0
    for _ in range(10):
        keys.admit("Bearer k2")  # unlimited
    assert ApiKeys().admit(None) == ""  # no keys configured: open


def test_token_rate_limit_charges_after_the_request() -> None:
    keys = ApiKeys([parse_key_spec("k::100")])
    keys.admit("Bearer k")
    keys.charge("k", 150)  # a big request goes into debt
    with pytest.raises(ShedError, match="token rate limit"):
        keys.admit("Bearer k")


def test_bad_key_specs_are_refused() -> None:
    for spec in ("", ":5", "k:x", "k:-1", "k:1:2:3"):
        with pytest.raises(ValueError):
            parse_key_spec(spec)


def test_admission_sheds_beyond_the_queue() -> None:
    admission = Admission(2)
    admission.enter("m")
    admission.enter("m")
    with pytest.raises(ShedError, match="2 requests in flight") as shed:
        admission.enter("m")
    assert shed.value.reason == QUEUE_FULL
    admission.enter("other")
    admission.leave("m")
    admission.enter("m")
    # A model with nothing in flight is forgotten (its name came from a client).
    admission.leave("other")
    assert "other" not in admission.inflight


def _shed(reason: str) -> float:
    return REGISTRY.get_sample_value("helios_proxy_shed_total", {"reason": reason}) or 0.0


def test_the_shed_metric_counts_by_reason_not_by_message() -> None:
    # A model named "rate limit": its queue_full message says "rate limit", which
    # reading the message would have counted as a rate limit.
    model = "rate limit"
    serving = ColdPath(
        cast(ColdStarts, SimpleNamespace(pool=None)),
        {},
        api_keys=ApiKeys([parse_key_spec("k:1")]),
        admission=Admission(1),
    )
    job = cast(Job, SimpleNamespace(model=model))
    before = {r: _shed(r) for r in (RATE_LIMIT, QUEUE_FULL, "unauthenticated")}
    assert serving._admit(job, "Bearer k") == "k"
    with pytest.raises(ShedError, match="rate limit"):  # the key's one request a minute
        serving._admit(job, "Bearer k")
    serving.api_keys = ApiKeys()
    with pytest.raises(ShedError, match="rate limit") as shed:  # "rate limit" is in flight
        serving._admit(job, None)
    assert shed.value.reason == QUEUE_FULL
    serving.api_keys = ApiKeys([parse_key_spec("k")])
    with pytest.raises(UnauthenticatedError):
        serving._admit(job, None)
    after = {r: _shed(r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {
        RATE_LIMIT: 1,
        QUEUE_FULL: 1,
        "unauthenticated": 1,
    }


def test_model_spec_flag() -> None:
    spec = parse_model_spec("m=/models/m,min=2,max=3")
    assert (spec.name, spec.path, spec.min_replicas, spec.max_replicas) == (
        "m",
        Path("/models/m"),
        2,
        3,
    )
    assert parse_model_spec("m=/x,min=4").max_replicas == 4
    for bad in ("m", "=x", "m=/x,warm=1", "m=/x,min=a"):
        with pytest.raises(ValueError):
            parse_model_spec(bad)


def test_cold_loads_are_placed_on_both_role_workers_only() -> None:
    """A prefill or decode worker could not serve a whole generation of the model."""
    from proxy.fleet import WorkerPool, WorkerRole

    pool = WorkerPool(["both:1", "prefill:1", "decode:1"])
    for address, role in (
        ("both:1", WorkerRole.BOTH),
        ("prefill:1", WorkerRole.PREFILL),
        ("decode:1", WorkerRole.DECODE),
    ):
        pool.record_heartbeat(
            address,
            worker_id=address,
            healthy=True,
            memory_total=1000,
            memory_free=1000,
            role=role,
        )
    assert [a.address for a in pool.placeable_agents()] == ["both:1"]
    choice = best_fit(pool.placeable_agents(), "m", 500)
    assert not isinstance(choice, NoFit) and choice.address == "both:1"
