"""Tokens per minute on the warm path: workers count each key's tokens, heartbeats carry
them, the control plane charges the key and routes it to the proxy while its budget is
spent (domain and xDS resources; the mesh test is tests/e2e/test_key_budgets_e2e.py)."""

from __future__ import annotations

import time

from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from proxy.fleet import WorkerPool
from proxy.key_budget_routes import budget_routes
from proxy.limits import ApiKeys, KeyLimits
from proxy.served import KeyTokensLedger
from proxy.xds_resources import INFERENCE_PREFIX, Resources, XdsSettings, build_route_configuration
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import XdsSnapshot
from worker.key_usage import KeyUsageLedger
from worker_api.keys import bearer_token, key_fingerprint


def _route(data: dict[str, object]) -> route_components_pb2.Route:
    return json_format.ParseDict(data, route_components_pb2.Route())


BASE_ROUTES = (
    _route({"match": {"prefix": "/v1/"}, "route": {"cluster": "proxy"}}),
    _route(
        {
            "match": {"prefix": INFERENCE_PREFIX},
            "route": {"cluster": "proxy", "timeout": "0s"},
        }
    ),
)


def test_the_worker_counts_tokens_per_key_fingerprint_and_bounds_the_keys() -> None:
    ledger = KeyUsageLedger(max_keys=2)
    ledger.charge("Bearer k1", 10)
    ledger.charge("bearer k1", 5)  # the scheme in any case
    ledger.charge("Bearer k2", 3)
    ledger.charge("Bearer k3", 7)  # over the bound: not counted
    ledger.charge("Basic k1", 100)  # not a bearer token
    ledger.charge(None, 100)
    ledger.charge("Bearer k2", 0)
    assert ledger.totals() == {key_fingerprint("k1"): 15, key_fingerprint("k2"): 3}
    assert "k1" not in "".join(ledger.totals())  # fingerprints, never the keys
    assert bearer_token("Bearer  spaced ") == "spaced" and bearer_token("Bearer") is None


def test_reported_totals_become_deltas_per_worker() -> None:
    ledger = KeyTokensLedger()
    assert ledger.update("w1", {"a": 10}) == {}  # the first report is a baseline
    assert ledger.update("w1", {"a": 25, "b": 4}) == {"a": 15, "b": 4}
    assert ledger.update("w1", {"a": 25, "b": 4}) == {}
    assert ledger.update("w1", {"a": 6}) == {"a": 6}  # the worker restarted
    ledger.forget("w1")
    assert ledger.update("w1", {"a": 50}) == {}


def test_a_key_over_its_budget_is_exhausted_until_it_refills() -> None:
    keys = ApiKeys([KeyLimits("lim", tokens_per_minute=60), KeyLimits("free")])
    keys.charge_reported(key_fingerprint("free"), 10_000)  # no limit: never exhausted
    keys.charge_reported("unknown-fingerprint", 10_000)
    assert keys.exhausted() == frozenset()
    keys.charge_reported(key_fingerprint("lim"), 90)  # 30 tokens of debt
    assert keys.exhausted() == {"lim"}
    # 60 tokens a minute: 1 per second; 31 s later the budget is positive again.
    assert keys.exhausted(time.monotonic() + 31) == frozenset()


def test_budget_routes_copy_the_inference_route_and_match_only_the_key() -> None:
    routes = budget_routes({"k2", "k1"}, BASE_ROUTES, INFERENCE_PREFIX)
    assert [r.name for r in routes] == ["helios-key-budget-0", "helios-key-budget-1"]
    first = routes[0]
    assert first.route.cluster == "proxy" and first.match.prefix == INFERENCE_PREFIX
    (header,) = first.match.headers
    assert header.name == "authorization" and header.string_match.suffix == " k1"
    assert "k1" not in first.name
    assert budget_routes({"k1"}, BASE_ROUTES[:1], INFERENCE_PREFIX) == ()


def test_budget_routes_come_before_the_model_routes() -> None:
    settings = XdsSettings(base_routes=BASE_ROUTES)
    resources = Resources.build(XdsSnapshot(throttled_keys=("k1",)), settings)
    model_route = _route({"name": "model", "match": {"prefix": INFERENCE_PREFIX}})
    config = build_route_configuration(
        [model_route], settings.base_routes, None, resources.budget_routes
    )
    names = [r.name for r in config.virtual_hosts[0].routes]
    assert names[:2] == ["helios-key-budget-0", "model"]


def test_the_control_plane_pushes_when_the_exhausted_keys_change() -> None:
    exhausted: frozenset[str] = frozenset()
    server = XdsServer(
        WorkerPool(), XdsSettings(base_routes=BASE_ROUTES), throttled_keys=lambda: exhausted
    )
    assert server.rebuild() is False
    exhausted = frozenset({"lim"})
    assert server.rebuild() is True
    assert server.snapshot.throttled_keys == ("lim",)
    assert server.rebuild() is False
    exhausted = frozenset()
    assert server.rebuild() is True and server.snapshot.throttled_keys == ()
