"""The status page's figures (proxy/status.py): rates from cumulative counters, model
states and phases, recent errors without addresses or paths."""

from __future__ import annotations

import logging

import pytest

from proxy.fleet import AgentState, ModelOnAgent, WorkerView
from proxy.status import (
    ModelCounters,
    RecentErrors,
    ThroughputMeter,
    scrub,
    summarize_models,
    summarize_workers,
)


def test_rates_from_cumulative_counters() -> None:
    meter = ThroughputMeter()
    key_a, key_b = ("w0", "m"), ("w1", "m")
    meter.add(100.0, {key_a: ModelCounters(1, 10, 1, 0.2)})
    assert meter.rates() == {}  # one sample: no rate yet
    meter.add(102.0, {key_a: ModelCounters(3, 50, 3, 0.6), key_b: ModelCounters(1, 20, 1, 0.3)})
    rates = meter.rates()
    # w0: 40 tokens over 2 s, TTFT 0.4 s over 2 first tokens; w1 is new: its first
    # report is a baseline (what it counted may be old).
    assert rates["m"][0] == pytest.approx(20.0)
    assert rates["m"][1] == pytest.approx(0.2)
    assert rates[""] == rates["m"]
    # w0 restarted (its counters went backwards): it counts from zero again.
    meter.add(104.0, {key_a: ModelCounters(1, 8, 1, 0.1), key_b: ModelCounters(2, 30, 2, 0.5)})
    assert meter.rates()["m"][0] == pytest.approx((8 + 10) / 4)


def test_rates_use_only_the_recent_window() -> None:
    meter = ThroughputMeter()
    meter.add(0.0, {("w", "m"): ModelCounters(0, 0)})
    meter.add(50.0, {("w", "m"): ModelCounters(1, 1000)})
    meter.add(55.0, {("w", "m"): ModelCounters(1, 1000)})
    assert meter.rates()["m"][0] == 0.0  # nothing in the last 10 s


def agent(address: str, worker_id: str, *models: ModelOnAgent, healthy: bool = True) -> WorkerView:
    view = WorkerView(address=address, worker_id=worker_id, healthy=healthy)
    view.state = AgentState.READY
    view.memory_total, view.memory_free = 1000, 400
    view.models = {m.model: m for m in models}
    return view


def test_models_are_warm_loading_with_their_phase_or_cold() -> None:
    agents = [
        agent("10.0.0.1:1", "w0", ModelOnAgent("warm", "ready", running=2, kv_cache_usage=0.5)),
        agent("10.0.0.2:1", "w1", ModelOnAgent("fetching", "downloading")),
        agent("10.0.0.3:1", "w2", ModelOnAgent("starting", "loading")),
        agent("10.0.0.4:1", "w3", ModelOnAgent("sick", "ready"), healthy=False),
    ]
    models = {m.model: m for m in summarize_models(agents, ["catalogued"], {"warm": (5.0, 0.1)})}
    assert (models["warm"].state, models["warm"].ready_replicas) == ("warm", 1)
    assert models["warm"].tokens_per_second == 5.0 and models["warm"].running == 2
    assert (models["fetching"].state, models["fetching"].phase) == ("loading", "downloading")
    assert (models["starting"].state, models["starting"].phase) == ("loading", "loading")
    assert models["sick"].state == "cold"  # its only worker takes no requests
    assert models["catalogued"].state == "cold"
    assert models["warm"].load_phases == () and models["catalogued"].load_phases == ()
    workers = summarize_workers(agents)
    assert [w.worker_id for w in workers] == ["w0", "w1", "w2", "w3"]
    assert workers[0].kv_cache_usage == 0.5 and workers[0].models == ("warm",)


def test_a_models_load_phases_come_from_a_worker_serving_it() -> None:
    loading = ModelOnAgent("m", "loading", load_phases=(("fetch", 9.0),))
    serving = ModelOnAgent("m", "ready", load_phases=(("fetch", 1.0), ("engine_start", 2.0)))
    other = ModelOnAgent("n", "ready", load_phases=(("fetch", 7.0),))
    agents = [agent("10.0.0.1:1", "w0", loading), agent("10.0.0.2:1", "w1", serving, other)]
    (m, n) = summarize_models(agents, [], {})
    assert m.load_phases == (("fetch", 1.0), ("engine_start", 2.0))
    assert n.load_phases == (("fetch", 7.0),)


def test_recent_errors_are_scrubbed_and_newest_first() -> None:
    errors = RecentErrors(capacity=2)
    log = logging.getLogger("proxy.test_status")
    log.addHandler(errors)
    try:
        log.info("not an error")
        log.warning("first", extra={"dependency": "registry"})
        log.warning(
            "worker failed", extra={"error": "connect to 10.1.2.3:5000 in /var/lib/helios/x"}
        )
        log.error("third")
    finally:
        log.removeHandler(errors)
    latest = errors.latest()
    assert [e.message.split(":")[0] for e in latest] == ["third", "worker failed"]
    assert "10.1.2.3" not in latest[1].message and "/var/lib" not in latest[1].message
    assert latest[1].source == "test_status"
    assert scrub("[::1]:80 and localhost:9 and ipv4:1.2.3.4:5") == (
        "an internal address and an internal address and an internal address"
    )
