"""The front door's conventional paths (routes of edge/routes.py's virtual host).

========================  ==========  ==================================================
path                      role        what answers
========================  ==========  ==================================================
``GET /``                 public      the status page (edge/status_page.html: one
                                      self-contained HTML+JS page, no external resource;
                                      Envoy serves it, its data comes from /v1/status)
``GET /v1/status``        inference   AdminService.GetStatus (the proxy): models, workers,
                                      tiers, tokens/s, TTFT, recent errors. Ids, states
                                      and figures only, never an address, path or key,
                                      so it has the OpenAI API's role: open when no
                                      inference key is configured, else any key. The page
                                      asks for a key when the answer is 401.
``GET /health``           public      AdminService.GetHealth (as ``/v1/health``)
``GET /version``          public      the Helios version (JSON)
``GET /metrics``          admin       the proxy's Prometheus metrics (as ``/v1/metrics``;
                                      Envoy's own are on its admin port, each worker's
                                      and service's on its metrics port)
========================  ==========  ==================================================
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUS_PAGE_PATH = Path(__file__).resolve().with_name("status_page.html")
# Envoy refuses a route configuration whose direct response body is larger than the
# route configuration's max_direct_response_body_size_bytes, 4096 by default.
MAX_DIRECT_BODY_BYTES = 4096
STATUS_REST_PATH = "/v1/status"
STATUS_METHOD = "GetStatus"
# The page's only script is inline, and the only thing it fetches is /v1/status.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'"
)


def helios_version() -> str:
    try:
        return importlib.metadata.version("helios")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def status_page() -> str:
    page = STATUS_PAGE_PATH.read_text(encoding="utf-8")
    if len(page.encode()) > MAX_DIRECT_BODY_BYTES:
        raise ValueError(f"{STATUS_PAGE_PATH} is over Envoy's {MAX_DIRECT_BODY_BYTES} bytes")
    return page


def _headers(content_type: str, *extra: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": key, "value": value}}
        for key, value in (("content-type", content_type), *extra)
    ]


def front_door_routes(
    *,
    admin_service: str,
    admin_cluster: str,
    public: dict[str, Any],
    plain_http: dict[str, Any],
    inference_auth: dict[str, Any],
    metrics_route: Callable[[str], dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The routes of the table above, ahead of every other route of the virtual host.

    ``public``: per-filter config of a route without a key; ``plain_http``: the one that
    keeps the transcoder off a non-gRPC path; ``inference_auth``: the inference role's;
    ``metrics_route(path)``: the admin role's metrics route at ``path``.
    """
    version = json.dumps({"name": "helios", "version": helios_version()}) + "\n"
    direct = {"typed_per_filter_config": {**public, **plain_http}}
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": status_page()}},
            "response_headers_to_add": _headers(
                "text/html; charset=utf-8",
                ("content-security-policy", CONTENT_SECURITY_POLICY),
                ("x-content-type-options", "nosniff"),
                ("cache-control", "no-cache"),
            ),
            **direct,
        },
        {
            "match": {"path": "/version"},
            "direct_response": {"status": 200, "body": {"inline_string": version}},
            "response_headers_to_add": _headers("application/json"),
            **direct,
        },
        # Transcoded to AdminService.GetHealth (its additional binding).
        {
            "match": {"path": "/health"},
            "route": {"cluster": admin_cluster, "timeout": "0s"},
            "typed_per_filter_config": public,
        },
        # The status's gRPC method has the inference role, not the admin API's.
        {
            "match": {"path": f"/{admin_service}/{STATUS_METHOD}"},
            "route": {"cluster": admin_cluster, "timeout": "0s"},
            "typed_per_filter_config": inference_auth,
        },
        {
            "match": {"path": STATUS_REST_PATH},
            "route": {"cluster": admin_cluster, "timeout": "0s"},
            "typed_per_filter_config": inference_auth,
        },
    ]
    if metrics_route is not None:
        routes.append(metrics_route("/metrics"))
    return routes
