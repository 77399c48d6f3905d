"""A warm model's streamed REST requests go to its workers' REST ports: the REST cluster,
endpoints and route the control plane builds beside the model's gRPC ones (xDS resources;
through a real Envoy and real workers: tests/e2e/test_dataplane_e2e.py)."""

from __future__ import annotations

import re

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from proxy.fleet import AgentState, ModelOnAgent, WorkerPool
from proxy.xds_resources import (
    INFERENCE_PREFIX,
    REST_PATH_REGEX,
    REST_PREFIX,
    Resources,
    XdsSettings,
    rest_cluster_name,
)
from proxy.xds_snapshot import LbKind, LbPolicy, XdsSnapshot, build_snapshot, cluster_name
from runtime.edge_names import MODEL_HEADER, REST_STREAM_PATHS, TRANSCODER_FILTER_NAME

MODEL = "org/model"
CLUSTER = cluster_name(MODEL)
REST = rest_cluster_name(CLUSTER)


def fleet(*agents: tuple[str, int]) -> WorkerPool:
    """Agents (address, REST port; 0: none) with MODEL ready."""
    pool = WorkerPool()
    for address, rest_port in agents:
        pool.add(address)
        pool.record_heartbeat(
            address,
            worker_id=address,
            healthy=True,
            models=[ModelOnAgent(MODEL, "ready")],
            state=AgentState.READY,
            rest_port=rest_port,
        )
    return pool


def resources(pool: WorkerPool, **settings: object) -> Resources:
    return Resources.build(build_snapshot(pool.agents()), XdsSettings(**settings))  # type: ignore[arg-type]


def test_the_rest_port_of_a_heartbeat_reaches_the_snapshot() -> None:
    pool = fleet(("10.0.0.1:50051", 8000), ("10.0.0.2:50051", 0))
    (route,) = build_snapshot(pool.agents()).routes
    assert [(e.port, e.rest_port) for e in route.endpoints] == [(50051, 8000), (50051, 0)]


def test_a_model_served_over_rest_gets_an_http1_cluster_of_the_rest_ports() -> None:
    built = resources(fleet(("10.0.0.1:50051", 8000), ("10.0.0.2:50051", 0)))
    assert set(built.clusters) == {CLUSTER, REST}
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = built.clusters[REST].typed_extension_protocol_options[  # type: ignore[attr-defined]
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    packed.Unpack(options)
    assert options.explicit_http_config.HasField("http_protocol_options")  # HTTP/1.1
    assert options.common_http_protocol_options.idle_timeout.seconds > 0
    grpc_options = http_protocol_options_pb2.HttpProtocolOptions()
    built.clusters[CLUSTER].typed_extension_protocol_options[  # type: ignore[attr-defined]
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(grpc_options)
    assert grpc_options.explicit_http_config.HasField("http2_protocol_options")
    # Only the agent with a REST port, on that port; named by its agent address.
    (locality,) = built.assignments[REST].endpoints  # type: ignore[attr-defined]
    (endpoint,) = locality.lb_endpoints
    assert endpoint.endpoint.address.socket_address.port_value == 8000
    assert endpoint.endpoint.hostname == "10.0.0.1:50051"


def test_an_edge_beside_the_workers_reaches_their_rest_endpoints_over_unix_sockets() -> None:
    pool = fleet(("10.0.0.1:50051", 8000), ("10.0.0.2:50051", 8000))
    pool.view("10.0.0.1:50051").rest_socket = "/run/helios/worker-0.rest.sock"

    def rest_addresses(built: Resources) -> list[str]:
        (locality,) = built.assignments[REST].endpoints  # type: ignore[attr-defined]
        return [
            e.endpoint.address.pipe.path
            or f"{e.endpoint.address.socket_address.address}:"
            f"{e.endpoint.address.socket_address.port_value}"
            for e in locality.lb_endpoints
        ]

    # Told the edge runs on the workers' host: the socket where a worker reports one.
    assert rest_addresses(resources(pool, local_sockets=True)) == [
        "/run/helios/worker-0.rest.sock",
        "10.0.0.2:8000",
    ]
    # Otherwise (an edge elsewhere cannot reach a worker's socket): TCP alone.
    assert rest_addresses(resources(pool)) == ["10.0.0.1:8000", "10.0.0.2:8000"]


def test_the_rest_route_matches_the_streamed_paths_and_the_model_with_the_transcoder_off() -> None:
    built = resources(fleet(("10.0.0.1:50051", 8000)))
    route = built.routes[REST]
    assert route.route.cluster == REST
    assert route.match.safe_regex.regex == REST_PATH_REGEX
    for path in REST_STREAM_PATHS:  # Envoy matches the whole path (RE2, query removed)
        assert re.fullmatch(REST_PATH_REGEX, path)
    assert not re.fullmatch(REST_PATH_REGEX, "/v1/chat/completions")
    (header,) = route.match.headers
    assert header.name == MODEL_HEADER and header.string_match.exact == MODEL
    # Off by naming no service (read by the transcoder when it runs, after the edge's
    # Lua filter routed the request here).
    transcoder = transcoder_pb2.GrpcJsonTranscoder()
    route.typed_per_filter_config[TRANSCODER_FILTER_NAME].Unpack(transcoder)
    assert not transcoder.services and transcoder.HasField("proto_descriptor_bin")
    # Retried elsewhere before the response starts: resets, refusals and 503 (the
    # worker's UNAVAILABLE).
    policy = route.route.retry_policy
    assert set(policy.retry_on.split(",")) >= {"reset", "connect-failure", "retriable-status-codes"}
    assert list(policy.retriable_status_codes) == [503]
    assert policy.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"
    # The gRPC route is unchanged.
    assert built.routes[CLUSTER].match.prefix == INFERENCE_PREFIX


def test_a_model_without_rest_endpoints_keeps_its_streams_on_grpc() -> None:
    built = resources(fleet(("10.0.0.1:50051", 0)))
    assert set(built.clusters) == set(built.routes) == set(built.assignments) == {CLUSTER}


def test_sessions_hash_to_the_same_worker_over_grpc_and_rest() -> None:
    pool = fleet(("10.0.0.1:50051", 8000), ("10.0.0.2:50051", 8000))
    policy = LbPolicy(LbKind.MAGLEV, "x-session-id")
    snapshot = build_snapshot(pool.agents(), {MODEL: policy})
    built = Resources.build(snapshot, XdsSettings())
    keys = {}
    for name in (CLUSTER, REST):
        assert built.routes[name].route.hash_policy[0].header.header_name == "x-session-id"
        (locality,) = built.assignments[name].endpoints  # type: ignore[attr-defined]
        keys[name] = [
            (
                e.endpoint.address.socket_address.port_value,
                e.metadata.filter_metadata["envoy.lb"].fields["hash_key"].string_value,
            )
            for e in locality.lb_endpoints
        ]
    # Dialled on different ports, hashed by the same key: the agent's address.
    assert keys[CLUSTER] == [(50051, "10.0.0.1:50051"), (50051, "10.0.0.2:50051")]
    assert keys[REST] == [(8000, "10.0.0.1:50051"), (8000, "10.0.0.2:50051")]


def test_a_throttled_key_meets_its_budget_route_before_the_rest_route() -> None:
    base = tuple(
        json_format.ParseDict(
            {"match": {"prefix": prefix}, "route": {"cluster": "proxy"}},
            route_components_pb2.Route(),
        )
        for prefix in (REST_PREFIX, INFERENCE_PREFIX)
    )
    snapshot = build_snapshot(fleet(("10.0.0.1:50051", 8000)).agents())
    throttled = XdsSnapshot(snapshot.routes, throttled_keys=("k1",))
    built = Resources.build(throttled, XdsSettings(base_routes=base))
    prefixes = sorted(r.match.prefix for r in built.budget_routes)
    # The REST one sends the key's REST requests on to the transcoder (made
    # InferenceService calls, they meet the other, which sends them to the proxy).
    assert prefixes == sorted([INFERENCE_PREFIX, REST_PREFIX])
    assert all(r.match.headers[0].string_match.suffix == " k1" for r in built.budget_routes)
    assert len({r.name for r in built.budget_routes}) == 2
