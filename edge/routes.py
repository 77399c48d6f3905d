"""The front door's virtual host: routes by role (edge/access.py), per-route body limits,
and the file the control plane reads it from (the proxy's ``--edge-routes``).

Envoy decides whether a filter runs from the route a request matches when it arrives,
before the transcoder turns a REST path into a gRPC one (then each filter's per-route
config comes from the route the gRPC path matches). So every REST path has a route of
its own role too, and roles never rely on the virtual host's default.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.access import (
    ADMIN_SERVICES,
    ESTIMATOR_SERVICE,
    HEALTH_METHOD,
    INFERENCE_SERVICES,
    PUBLIC_SERVICES,
    REGISTRY_ADMIN_METHODS,
    REGISTRY_CATALOGUE_METHODS,
    REGISTRY_SERVICE,
    STORAGE_ADMIN_METHODS,
    STORAGE_SERVICE,
    STREAMED_UPLOADS,
    EdgeAccess,
    auth_allows,
    auth_off,
    inference_auth,
)
from edge.clusters import Upstream
from edge.front_door import front_door_routes
from edge.names import (
    BUFFER_FILTER_NAME,
    EMBEDDINGS_REST_PATH,
    ESTIMATE_REST_PREFIX,
    FILTER_CONFIG_TYPE,
    HEALTH_REST_PATH,
    RATE_LIMIT_DESCRIPTOR,
    TRANSCODER_FILTER_NAME,
)
from runtime.edge_names import VIRTUAL_HOST_NAME
from runtime.files import write_json_atomic
from runtime.limits import CONTROL_BODY_BYTES, EMBEDDINGS_BODY_BYTES, ESTIMATOR_BODY_BYTES

_BUFFER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


def grpc_route(prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        # timeout 0: no overall limit (generations can be long); the idle timeout applies.
        "route": {"cluster": cluster, "timeout": "0s"},
    }


def body_limit(max_bytes: int) -> dict[str, Any]:
    """Per-route config of the buffer filter: this route's requests carry at most
    ``max_bytes`` of body (413 Payload Too Large, OpenAI-shaped by the Lua filter)."""
    return {
        BUFFER_FILTER_NAME: {
            "@type": _BUFFER_ROUTE_TYPE,
            "buffer": {"max_request_bytes": max_bytes},
        }
    }


def no_body_limit() -> dict[str, Any]:
    """Health and reflection: not buffered (reflection is a bidirectional stream a client
    keeps open; buffering would wait for its end)."""
    return {BUFFER_FILTER_NAME: {"@type": _BUFFER_ROUTE_TYPE, "disabled": True}}


def plain_http() -> dict[str, Any]:
    """The per-filter config that keeps the transcoder off a plain HTTP route."""
    return {TRANSCODER_FILTER_NAME: {"@type": FILTER_CONFIG_TYPE, "disabled": True}}


def _limited(route: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """``route`` with a body limit added to its per-filter config."""
    return {
        **route,
        "typed_per_filter_config": {
            **route.get("typed_per_filter_config", {}),
            **body_limit(max_bytes),
        },
    }


def _direct(status: int, body: str) -> dict[str, Any]:
    return {"status": status, "body": {"inline_string": body}}


def _admin_route(
    match: dict[str, Any], action: dict[str, Any], access: EdgeAccess
) -> dict[str, Any]:
    """A route of the admin role: admin keys only; closed (403) when there is none."""
    action = {key: value for key, value in action.items() if key != "match"}
    if not access.admin_keys:
        return {
            "match": match,
            "direct_response": _direct(403, "the admin API is closed: no admin key is configured"),
            "typed_per_filter_config": auth_off(),
        }
    return {
        **action,
        "match": match,
        "typed_per_filter_config": auth_allows(access.admin_clients()),
    }


def _admin_method_route(
    service: str, method: str, upstream: Upstream, access: EdgeAccess
) -> dict[str, Any]:
    """One method of an otherwise internal service, for admin keys only."""
    route = _admin_route({"path": f"/{service}/{method}"}, grpc_route("", upstream.name), access)
    if method in STREAMED_UPLOADS:
        route["typed_per_filter_config"].update(no_body_limit())
        return route
    return _limited(route, CONTROL_BODY_BYTES)


def _metrics_route(metrics_upstream: Upstream, access: EdgeAccess, path: str) -> dict[str, Any]:
    """``path`` -> the metrics upstream's /metrics (HTTP/1.1), for admin keys."""
    action = {"route": {"cluster": metrics_upstream.name, "timeout": "30s"}}
    action["route"]["prefix_rewrite"] = "/metrics"
    route = _admin_route({"path": path}, action, access)
    route["typed_per_filter_config"].update(plain_http())
    return route


def _rest_routes(
    admin_upstream: Upstream, inference_upstream: Upstream, access: EdgeAccess
) -> list[dict[str, Any]]:
    """REST paths as they arrive (the transcoder routes them again once they are gRPC).
    Body limits are per route too (the buffer filter reads them from the route a request
    matches on arrival): the inference limit is the buffer filter's own default, so the
    per-model routes the control plane adds get it."""
    inference = inference_auth(access)
    return [
        {**grpc_route("", admin_upstream.name), "match": {"path": HEALTH_REST_PATH}}
        | {"typed_per_filter_config": auth_off()},
        _limited(
            _admin_route({"prefix": "/v1/admin/"}, grpc_route("", admin_upstream.name), access),
            CONTROL_BODY_BYTES,
        ),
        {
            **grpc_route(ESTIMATE_REST_PREFIX, inference_upstream.name),
            "typed_per_filter_config": {**inference, **body_limit(ESTIMATOR_BODY_BYTES)},
        },
        {
            **grpc_route("", inference_upstream.name),
            "match": {"path": EMBEDDINGS_REST_PATH},
            "typed_per_filter_config": {**inference, **body_limit(EMBEDDINGS_BODY_BYTES)},
        },
        {**grpc_route("/v1/", inference_upstream.name), "typed_per_filter_config": inference},
    ]


def _inference_service_routes(service: str, upstream: Upstream, access: EdgeAccess) -> list[Any]:
    route = {
        **grpc_route(f"/{service}/", upstream.name),
        "typed_per_filter_config": inference_auth(access),
    }
    if service == ESTIMATOR_SERVICE:
        route = _limited(route, ESTIMATOR_BODY_BYTES)
    return [route]


def _admin_service_routes(service: str, upstream: Upstream, access: EdgeAccess) -> list[Any]:
    health = {
        **grpc_route("", upstream.name),
        "match": {"path": f"/{service}/{HEALTH_METHOD}"},
        "typed_per_filter_config": auth_off(),
    }
    admin = _admin_route({"prefix": f"/{service}/"}, grpc_route("", upstream.name), access)
    return [health, _limited(admin, CONTROL_BODY_BYTES)]


def _registry_routes(service: str, upstream: Upstream, access: EdgeAccess) -> list[Any]:
    catalogue = [
        {
            **grpc_route("", upstream.name),
            "match": {"path": f"/{service}/{method}"},
            "typed_per_filter_config": {
                **inference_auth(access),
                **body_limit(CONTROL_BODY_BYTES),
            },
        }
        for method in REGISTRY_CATALOGUE_METHODS
    ]
    writes = [
        _admin_method_route(service, method, upstream, access) for method in REGISTRY_ADMIN_METHODS
    ]
    return catalogue + writes


def _storage_routes(service: str, upstream: Upstream, access: EdgeAccess) -> list[Any]:
    return [
        _admin_method_route(service, method, upstream, access) for method in STORAGE_ADMIN_METHODS
    ]


def _public_service_route(service: str, cluster: str) -> dict[str, Any]:
    return {
        **grpc_route(f"/{service}/", cluster),
        "typed_per_filter_config": {**auth_off(), **no_body_limit()},
    }


def _service_routes(service: str, upstream: Upstream, access: EdgeAccess) -> list[Any] | None:
    """A gRPC service's routes by its role; None for an internal service (never routed)."""
    if service in INFERENCE_SERVICES:
        return _inference_service_routes(service, upstream, access)
    if service in ADMIN_SERVICES:
        return _admin_service_routes(service, upstream, access)
    if service == REGISTRY_SERVICE:
        return _registry_routes(service, upstream, access)
    if service == STORAGE_SERVICE:
        return _storage_routes(service, upstream, access)
    if service in PUBLIC_SERVICES:
        return [_public_service_route(service, upstream.name)]
    return None


def _rate_limits() -> list[dict[str, Any]]:
    """Every route of the host, model routes included, is limited per API key."""
    header = {"header_name": "authorization", "descriptor_key": RATE_LIMIT_DESCRIPTOR}
    return [{"actions": [{"request_headers": header}]}]


def edge_virtual_host(
    *,
    grpc_upstreams: Mapping[str, Upstream],
    default_grpc_upstream: Upstream,
    metrics_upstream: Upstream | None,
    access: EdgeAccess,
) -> tuple[dict[str, Any], list[tuple[Upstream, bool]]]:
    """The front door's virtual host (routes by role, see edge/access.py) and the
    clusters it names as (upstream, speaks HTTP/2).

    ``grpc_upstreams`` maps full service names to upstreams; services of no public,
    inference or admin role (WorkerService, StorageService) are not routed even when
    given. The registry is routed for its catalogue calls only. Health and reflection go
    to ``default_grpc_upstream``; any other path is answered 404 (gRPC UNIMPLEMENTED).
    The virtual host's own auth is the inference role's, so routes the control plane adds
    (one per served model) are guarded like the OpenAI API.
    """
    for service in grpc_upstreams:
        if not service or "/" in service or service.startswith("."):
            raise ValueError(f"not a full gRPC service name: {service!r}")
    admin_upstream = grpc_upstreams.get(ADMIN_SERVICES[0], default_grpc_upstream)
    inference_upstream = grpc_upstreams.get(INFERENCE_SERVICES[0], default_grpc_upstream)
    routes: list[dict[str, Any]] = []
    cluster_specs: list[tuple[Upstream, bool]] = [(default_grpc_upstream, True)]
    metrics_route = None
    if metrics_upstream is not None:
        metrics_route = functools.partial(_metrics_route, metrics_upstream, access)
        routes.append(metrics_route("/v1/metrics"))
        cluster_specs.append((metrics_upstream, False))
    # /, /version, /health, /v1/status, /metrics (edge/front_door.py says who may call).
    routes += front_door_routes(
        admin_service=ADMIN_SERVICES[0],
        admin_cluster=admin_upstream.name,
        public=auth_off(),
        plain_http=plain_http(),
        inference_auth=inference_auth(access),
        metrics_route=metrics_route,
    )
    routes += _rest_routes(admin_upstream, inference_upstream, access)
    # Longest service names first, so no prefix shadows another.
    for service in sorted(grpc_upstreams, key=lambda s: (-len(s), s)):
        upstream = grpc_upstreams[service]
        service_routes = _service_routes(service, upstream, access)
        if service_routes is not None:  # else internal: never on the front door
            routes += service_routes
            cluster_specs.append((upstream, True))
    routes += [
        _public_service_route(service, default_grpc_upstream.name)
        for service in PUBLIC_SERVICES
        if service not in grpc_upstreams
    ]
    # Anything else: not found, for everyone (no 401 that would tell a path exists).
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": _direct(404, "no such path on this server"),
            "typed_per_filter_config": auth_off(),
        }
    )
    virtual_host = {
        "name": VIRTUAL_HOST_NAME,
        "domains": ["*"],
        "routes": routes,
        # Routes the control plane adds (one per served model) inherit the inference role.
        "typed_per_filter_config": inference_auth(access),
    }
    if access.requests_per_minute:
        virtual_host["rate_limits"] = _rate_limits()
    return virtual_host, cluster_specs


def write_edge_routes(path: Path, virtual_host: Mapping[str, Any]) -> Path:
    """Write the edge's virtual host (:func:`edge_virtual_host`) as the control plane's
    base routes (the proxy's ``--edge-routes``): JSON, temp file + fsync + rename."""
    return write_json_atomic(Path(path), virtual_host)
