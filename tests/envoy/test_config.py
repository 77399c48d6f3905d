"""The descriptor set and the rendered bootstrap, checked without running Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from cli.envoy import find_envoy_binary
from edge import EdgeAccess, Upstream, render_envoy_config
from edge.access import REGISTRY_ADMIN_METHODS, REGISTRY_CATALOGUE_METHODS, STORAGE_ADMIN_METHODS
from edge.names import API_KEY_FILTER_NAME, TRANSCODED_SERVICES, TRANSCODER_FILTER_NAME

PROXY = Upstream("proxy", "127.0.0.1", 50051)


def render(descriptor: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "admin_port": 0,
        "descriptor_path": descriptor,
        "grpc_upstreams": {
            "helios.v1.InferenceService": PROXY,
            "helios.v1.EstimatorService": Upstream("estimator", "estimator.local", 50052),
        },
        "default_grpc_upstream": PROXY,
        "metrics_upstream": Upstream("metrics", "127.0.0.1", 9100),
    }
    kwargs.update(overrides)
    return json.loads(render_envoy_config(**kwargs))


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed_config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed_config


def test_descriptor_set_has_every_service(descriptor: Path) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    names = {f.name for f in fds.file}
    assert {"helios/v1/inference.proto", "google/api/annotations.proto"} <= names
    assert "google/protobuf/struct.proto" in names
    inference = next(f for f in fds.file if f.name == "helios/v1/inference.proto")
    assert inference.source_code_info.location  # --include_source_info


def test_transcoded_services_are_those_with_http_rules(descriptor: Path) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    annotated = set()
    for file in fds.file:
        if not file.package.startswith("helios."):
            continue
        for service in file.service:
            for method in service.method:
                # Re-parse the options now that google.api.http is registered (imported).
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                if options.HasExtension(annotations_pb2.http):
                    annotated.add(f"{file.package}.{service.name}")
    assert annotated == set(TRANSCODED_SERVICES)


def test_routes_and_clusters(descriptor: Path) -> None:
    config = render(descriptor, access=EdgeAccess(admin_keys=("adm",)))
    routes = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"] == {"path": "/v1/metrics"}
    assert routes[0]["route"]["cluster"] == "metrics"
    assert routes[0]["route"]["prefix_rewrite"] == "/metrics"
    assert routes[0]["typed_per_filter_config"][TRANSCODER_FILTER_NAME]["disabled"] is True
    prefixes = [
        (r["match"].get("prefix") or r["match"]["path"], r.get("route", {}).get("cluster"))
        for r in routes[1:]
    ]
    assert prefixes == [
        # The front door's conventional paths (edge/front_door.py).
        ("/", None),  # the status page
        ("/version", None),
        ("/health", "proxy"),
        ("/helios.v1.AdminService/GetStatus", "proxy"),
        ("/v1/status", "proxy"),
        ("/metrics", "metrics"),
        # REST paths as they arrive (for which filters run), then the gRPC paths.
        ("/v1/health", "proxy"),
        ("/v1/admin/", "proxy"),
        ("/v1/estimate/", "proxy"),  # the estimator's own body limit
        ("/v1/embeddings", "proxy"),  # the embeddings' own body limit
        ("/v1/", "proxy"),
        ("/helios.v1.EstimatorService/", "estimator"),
        ("/helios.v1.InferenceService/", "proxy"),
        ("/grpc.health.v1.Health/", "proxy"),
        ("/grpc.reflection.v1alpha.ServerReflection/", "proxy"),
        ("/grpc.reflection.v1.ServerReflection/", "proxy"),
        ("/", None),  # everything else: 404
    ]
    assert routes[-1]["direct_response"]["status"] == 404
    assert all(r["route"]["timeout"] == "0s" for r in routes[7:-1])
    assert [r["direct_response"]["status"] for r in routes[1:3]] == [200, 200]

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"proxy", "estimator", "metrics"}
    assert clusters["proxy"]["type"] == "STATIC"
    assert clusters["estimator"]["type"] == "STRICT_DNS"
    for name in ("proxy", "estimator"):
        options = clusters[name]["typed_extension_protocol_options"]
        http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in http["explicit_http_config"]
    assert "typed_extension_protocol_options" not in clusters["metrics"]

    filters = [f["name"] for f in hcm(config)["http_filters"]]
    assert filters == [
        "envoy.filters.http.lua",
        "envoy.filters.http.buffer",  # per-route body limits (413)
        "envoy.filters.http.grpc_json_transcoder",
        API_KEY_FILTER_NAME,
        "envoy.filters.http.router",
    ]
    transcoder = hcm(config)["http_filters"][2]["typed_config"]
    assert transcoder["services"] == list(TRANSCODED_SERVICES)
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["url_unescape_spec"] == "ALL_CHARACTERS"  # org%2Fname binds as org/name
    assert hcm(config)["codec_type"] == "AUTO"


def _routes_by_path(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    routes = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return {r["match"].get("prefix") or r["match"]["path"]: r for r in routes}


INTERNAL = Upstream("internal", "127.0.0.1", 50060)
EVERY_SERVICE = {
    "helios.v1.InferenceService": PROXY,
    "helios.v1.AdminService": PROXY,
    "helios.v1.WorkerService": INTERNAL,
    "helios.v1.StorageService": INTERNAL,
    "helios.v1.RegistryService": Upstream("registry", "127.0.0.1", 50061),
}


def test_internal_services_are_never_routed(descriptor: Path) -> None:
    config = render(
        descriptor,
        grpc_upstreams=EVERY_SERVICE,
        access=EdgeAccess(inference_keys=("inf",), admin_keys=("adm",)),
    )
    routes = _routes_by_path(config)
    assert not any("WorkerService" in path for path in routes)
    registry = sorted(path for path in routes if "RegistryService" in path)
    assert registry == sorted(
        f"/helios.v1.RegistryService/{m}"
        for m in REGISTRY_CATALOGUE_METHODS + REGISTRY_ADMIN_METHODS
    )
    storage = sorted(path for path in routes if "StorageService" in path)
    assert storage == [f"/helios.v1.StorageService/{m}" for m in STORAGE_ADMIN_METHODS]
    # The writes and storaged's figures (which name server paths) are the admin role's.
    for path in [f"/helios.v1.RegistryService/{m}" for m in REGISTRY_ADMIN_METHODS] + storage:
        auth = routes[path]["typed_per_filter_config"][API_KEY_FILTER_NAME]
        assert auth["allowed_clients"] == ["admin-0"], path
    catalogue = routes[f"/helios.v1.RegistryService/{REGISTRY_CATALOGUE_METHODS[0]}"]
    catalogue_auth = catalogue["typed_per_filter_config"][API_KEY_FILTER_NAME]
    assert catalogue_auth["allowed_clients"] == ["inference-0", "admin-0"]


def test_roles_and_keys(descriptor: Path) -> None:
    access = EdgeAccess(inference_keys=("inf-a", "inf-b"), admin_keys=("adm",))
    config = render(descriptor, grpc_upstreams=EVERY_SERVICE, access=access)
    auth = next(
        f["typed_config"] for f in hcm(config)["http_filters"] if f["name"] == API_KEY_FILTER_NAME
    )
    assert {c["key"]: c["client"] for c in auth["credentials"]} == {
        "inf-a": "inference-0",
        "inf-b": "inference-1",
        "adm": "admin-0",
    }
    assert auth["key_sources"] == [{"header": "authorization"}]
    virtual_host = hcm(config)["route_config"]["virtual_hosts"][0]
    # The inference role (the virtual host's default, so per-model routes inherit it).
    inherited = virtual_host["typed_per_filter_config"][API_KEY_FILTER_NAME]
    assert inherited["allowed_clients"] == ["inference-0", "inference-1", "admin-0"]
    routes = _routes_by_path(config)
    admin = routes["/helios.v1.AdminService/"]["typed_per_filter_config"][API_KEY_FILTER_NAME]
    assert admin["allowed_clients"] == ["admin-0"]
    metrics = routes["/v1/metrics"]["typed_per_filter_config"][API_KEY_FILTER_NAME]
    assert metrics["allowed_clients"] == ["admin-0"]
    health = routes["/grpc.health.v1.Health/"]["typed_per_filter_config"][API_KEY_FILTER_NAME]
    assert health["disabled"] is True


def test_without_keys_inference_is_open_and_admin_closed(descriptor: Path) -> None:
    config = render(descriptor, grpc_upstreams=EVERY_SERVICE)
    virtual_host = hcm(config)["route_config"]["virtual_hosts"][0]
    assert virtual_host["typed_per_filter_config"][API_KEY_FILTER_NAME]["disabled"] is True
    routes = _routes_by_path(config)
    for path in ("/helios.v1.AdminService/", "/v1/metrics", "/v1/admin/"):
        assert routes[path]["direct_response"]["status"] == 403
        assert "route" not in routes[path]


@pytest.mark.parametrize(
    ("inference", "admin"),
    [(("same",), ("same",)), (("",), ()), (("has space",), ()), (("k" * 257,), ())],
)
def test_bad_keys_are_rejected(inference: tuple[str, ...], admin: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="key"):
        EdgeAccess(inference_keys=inference, admin_keys=admin)


def test_without_metrics_upstream(descriptor: Path) -> None:
    config = render(descriptor, metrics_upstream=None, grpc_upstreams={})
    routes = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"].get("prefix") or r["match"]["path"] for r in routes] == [
        # The front door (edge/front_door.py); no /metrics without a metrics upstream.
        "/",
        "/version",
        "/health",
        "/helios.v1.AdminService/GetStatus",
        "/v1/status",
        "/v1/health",
        "/v1/admin/",
        "/v1/estimate/",
        "/v1/embeddings",
        "/v1/",
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1alpha.ServerReflection/",
        "/grpc.reflection.v1.ServerReflection/",
        "/",
    ]
    assert [c["name"] for c in config["static_resources"]["clusters"]] == ["proxy"]


def test_conflicting_cluster_names_are_rejected(descriptor: Path) -> None:
    with pytest.raises(ValueError, match="given twice"):
        render(
            descriptor,
            grpc_upstreams={"helios.v1.InferenceService": Upstream("proxy", "127.0.0.1", 1)},
        )


def test_bad_service_name_is_rejected(descriptor: Path) -> None:
    with pytest.raises(ValueError, match="service name"):
        render(descriptor, grpc_upstreams={"/helios.v1.InferenceService/": PROXY})


@pytest.mark.parametrize(
    "access",
    [EdgeAccess(), EdgeAccess(inference_keys=("inf",), admin_keys=("adm",))],
    ids=["no-keys", "keys"],
)
def test_envoy_validates_the_config(descriptor: Path, tmp_path: Path, access: EdgeAccess) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(
        render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=descriptor,
            grpc_upstreams={**EVERY_SERVICE, "helios.v1.InferenceService": PROXY},
            default_grpc_upstream=PROXY,
            metrics_upstream=Upstream("metrics", "localhost", 9100),
            access=access,
        )
    )
    result = subprocess.run(
        [
            find_envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
