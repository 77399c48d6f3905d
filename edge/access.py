"""Who may call what at the front door: every path has one role, and the keys.

* public: health checks and server reflection (no key);
* inference: the OpenAI API, the estimator and the registry's read-only catalogue calls
  (an inference or an admin key when inference keys are configured, else open);
* admin: AdminService (/v1/admin/*) and /v1/metrics (an admin key, always; with no admin
  key configured nobody gets in);
* internal: everything else (WorkerService, StorageService, registry writes and blob
  reads, the control plane's xDS): never routed; the front door answers 404 (gRPC
  UNIMPLEMENTED), whatever key a client sends.

Envoy's api_key_auth filter enforces the roles from each route's per-filter config,
built here (:func:`auth_off`, :func:`auth_allows`, :func:`inference_auth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge.names import API_KEY_FILTER_NAME, FILTER_CONFIG_TYPE

PUBLIC_SERVICES: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
INFERENCE_SERVICES: tuple[str, ...] = ("helios.v1.InferenceService", "helios.v1.EstimatorService")
ADMIN_SERVICES: tuple[str, ...] = ("helios.v1.AdminService",)
REGISTRY_SERVICE = "helios.v1.RegistryService"
ESTIMATOR_SERVICE = "helios.v1.EstimatorService"
# AdminService's health call is public (load balancers and probes call it without a key).
HEALTH_METHOD = "GetHealth"
# The registry calls that only read the catalogue (never a blob's bytes, never a write).
REGISTRY_CATALOGUE_METHODS: tuple[str, ...] = (
    "ResolveModel",
    "GetManifest",
    "GetConfig",
    "ListModels",
)
# The registry's writes a person makes with `helios pull` (admin role): an upload streams
# the files (never buffered: the registry checks them against the sizes its header
# declares), an import names a Hub repository or a directory under the registry's roots.
REGISTRY_ADMIN_METHODS: tuple[str, ...] = ("UploadModel", "ImportModel")
STREAMED_UPLOADS: tuple[str, ...] = ("UploadModel",)
# storaged's figures for `helios cache` (admin role: they name server paths).
STORAGE_SERVICE = "helios.v1.StorageService"
STORAGE_ADMIN_METHODS: tuple[str, ...] = ("GetStats",)

_API_KEY_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
)


@dataclass(frozen=True)
class EdgeAccess:
    """The keys the front door accepts: inference keys and (separate) admin keys.

    No inference key: the inference role is open. No admin key: the admin role is closed.
    An admin key also passes where an inference key does.
    """

    inference_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    # (inference key, requests per minute) for the keys with a request rate limit.
    requests_per_minute: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for key, rpm in self.requests_per_minute:
            if key not in self.inference_keys or rpm < 1:
                raise ValueError(
                    "a rate-limited key must be an inference key with >= 1 request/min"
                )
        for key in (*self.inference_keys, *self.admin_keys):
            if not key or any(ch.isspace() or ch == ":" for ch in key) or len(key) > 256:
                raise ValueError("an API key must be 1-256 characters without white space or ':'")
        if set(self.inference_keys) & set(self.admin_keys):
            raise ValueError("a key cannot be both an inference key and an admin key")

    def clients(self) -> list[tuple[str, str]]:
        """(key, client name) for every key; names say the role, never the key."""
        return [(key, f"inference-{i}") for i, key in enumerate(self.inference_keys)] + [
            (key, f"admin-{i}") for i, key in enumerate(self.admin_keys)
        ]

    def admin_clients(self) -> list[str]:
        return [f"admin-{i}" for i in range(len(self.admin_keys))]


def auth_off() -> dict[str, Any]:
    """A route's per-filter config that lets any caller through (no key)."""
    return {API_KEY_FILTER_NAME: {"@type": FILTER_CONFIG_TYPE, "disabled": True}}


def auth_allows(clients: Sequence[str]) -> dict[str, Any]:
    """A route's per-filter config that admits these clients' keys only."""
    return {API_KEY_FILTER_NAME: {"@type": _API_KEY_ROUTE_TYPE, "allowed_clients": list(clients)}}


def inference_auth(access: EdgeAccess) -> dict[str, Any]:
    """The inference role's per-route auth: any key when inference keys exist, else open."""
    if not access.inference_keys:
        return auth_off()
    return auth_allows([client for _, client in access.clients()])
