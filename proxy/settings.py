"""The proxy's settings: its flags and ``HELIOS_PROXY_*`` variables as one typed, frozen
object (bound by runtime/settings.py), and what is derived from them with I/O (the API
key file, the edge's routes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from proxy.cold_start import ModelSpec, parse_model_spec
from proxy.heartbeats import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_HEARTBEAT_TIMEOUT_S
from proxy.limits import KeyLimits, load_key_file, parse_key_spec
from proxy.registry import DEFAULT_USAGE_INTERVAL_S
from proxy.warm_pools import DEFAULT_RECONCILE_INTERVAL_S
from proxy.xds_resources import (
    DEFAULT_MAX_REQUESTS_PER_MODEL,
    UpstreamTls,
    XdsSettings,
    load_edge_virtual_host,
)
from proxy.xds_snapshot import DEFAULT_SESSION_HEADER, ROUTING_POLICIES
from runtime.config import ConfigError
from runtime.settings import Settings, setting

# Where a pod finds its own namespace (the service account's mount).
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DISCOVERY_MODES = ("static", "kubernetes")


def parse_pool(spec: str) -> tuple[str, str]:
    """``MODEL=DEPLOYMENT`` -> (model, Deployment name)."""
    model, sep, deployment = spec.partition("=")
    if not sep or not model or not deployment:
        raise ValueError(f"expected MODEL=DEPLOYMENT, got {spec!r}")
    return model, deployment


def parse_pools(specs: Sequence[str]) -> dict[str, set[str]]:
    """``MODEL=DEPLOYMENT`` specs -> model -> Deployment names."""
    pools: dict[str, set[str]] = {}
    for model, deployment in map(parse_pool, filter(None, specs)):
        pools.setdefault(model, set()).add(deployment)
    return pools


def _tls_part(what: str) -> str:
    return (
        f"the {what} Envoy uses for mutual TLS to the workers (all three of"
        " cert/key/ca, or none: plain h2c)"
    )


@dataclasses.dataclass(frozen=True)
class ProxySettings(Settings):
    """Everything ``python -m proxy.server`` is told (besides the shared server flags)."""

    worker: tuple[str, ...] = setting(
        (),
        env="workers",
        metavar="HOST:PORT",
        help="a worker's gRPC address (repeatable; env HELIOS_PROXY_WORKERS, comma-separated);"
        " static discovery only",
    )
    discovery: str = setting(
        "static",
        choices=DISCOVERY_MODES,
        help="where the workers come from: the --worker list, or the EndpointSlices of the"
        " worker Services in --k8s-namespace (env HELIOS_PROXY_DISCOVERY); with"
        " kubernetes, a model's pool (its Deployment) scales to zero when idle and back"
        " on demand",
    )
    k8s_namespace: str = setting(
        "",
        help="the workers' namespace (env HELIOS_PROXY_K8S_NAMESPACE); default: the pod's"
        " own, else 'default'",
    )
    k8s_worker_selector: str = setting(
        "app.kubernetes.io/component=worker",
        help="label selector of the worker Services' EndpointSlices"
        " (env HELIOS_PROXY_K8S_WORKER_SELECTOR)",
    )
    kubeconfig: str = setting(
        "",
        help="a kubeconfig file, when not running in a pod (default: $KUBECONFIG, then"
        " ~/.kube/config); in a pod the service account is used",
    )
    k8s_pool: tuple[str, ...] = setting(
        (),
        env="k8s_pools",
        metavar="MODEL=DEPLOYMENT",
        check=parse_pool,
        help="the Deployment running MODEL's workers, for pools that may be at zero when"
        " the proxy starts (repeatable; env HELIOS_PROXY_K8S_POOLS, comma-separated);"
        " pools whose endpoints the proxy has seen are known anyway (the Deployment is"
        " named like its worker Service)",
    )
    k8s_resync: float = setting(
        300.0,
        gt=0,
        help="seconds between full relists of the EndpointSlices (the watch resumes between)",
    )
    heartbeat_interval: float = setting(
        DEFAULT_HEARTBEAT_INTERVAL_S,
        gt=0,
        help="seconds between heartbeats to each worker (and one at once when its"
        " connection drops); a worker whose heartbeat fails leaves Envoy's endpoints at"
        " once (and comes back with its next good one)",
    )
    heartbeat_timeout: float = setting(
        DEFAULT_HEARTBEAT_TIMEOUT_S,
        gt=0,
        help="seconds a worker has to answer a heartbeat before it counts as failed",
    )
    reconcile_interval: float = setting(
        DEFAULT_RECONCILE_INTERVAL_S,
        gt=0,
        help="seconds between warm-pool passes (min replicas, scale-up, idle unloads, prefetch)",
    )
    model: tuple[str, ...] = setting(
        (),
        env="models",
        separator=";",
        metavar="NAME=PATH[,min=N][,max=M]",
        check=parse_model_spec,
        help="a model the proxy may load on demand from PATH (on the workers' host),"
        " with its warm replicas (repeatable; env HELIOS_PROXY_MODELS, ';'-separated)",
    )
    estimator: str = setting(
        "",
        metavar="HOST:PORT",
        help="the estimator service; without it memory needs are the weights' bytes",
    )
    registry: str = setting(
        "",
        metavar="HOST:PORT",
        help="the registry service: /v1/models lists what it holds, a request for any of"
        " its models cold-starts it (the worker fetches it through storaged), usage is"
        " reported to it, and its eviction candidates order evictions (env"
        " HELIOS_PROXY_REGISTRY)",
    )
    storaged: str = setting(
        "",
        metavar="HOST:PORT",
        help="a storaged service whose state /v1/health reports (health checks only: the"
        " workers fetch through it, the proxy never does; env HELIOS_PROXY_STORAGED)",
    )
    prefetch: int = setting(
        0,
        ge=0,
        metavar="N",
        help="ask the registry for N prefetch hints each warm-pool pass and preload the"
        " first that fits in free memory (needs --registry); 0 turns prefetching off",
    )
    usage_interval: float = setting(
        DEFAULT_USAGE_INTERVAL_S,
        gt=0,
        help="seconds between usage reports to the registry (batched, in the background)",
    )
    routing_policy: str = setting(
        "least-outstanding",
        choices=ROUTING_POLICIES,
        help="how Envoy chooses a READY replica: least request weighted by load"
        " (least-outstanding), consistent hashing on the prompt prefix with bounded load"
        " (prefix-aware), or on the session header (session-affinity)",
    )
    session_header: str = setting(
        DEFAULT_SESSION_HEADER,
        help="request header carrying the session id (session-affinity policy)",
    )
    target_concurrency: int = setting(
        8,
        ge=0,
        metavar="N",
        help="requests per READY replica above which a model gets one more replica (up to"
        " its max replicas, where memory is free); 0 turns scale-up under load off",
    )
    idle_ttl: float = setting(
        300.0,
        ge=0,
        help="seconds a replica may sit idle before it is unloaded (down to the model's"
        " min replicas); 0 never unloads",
    )
    load_timeout: float = setting(
        300.0, gt=0, help="the most a request waits for a cold model to load"
    )
    drain_timeout: float = setting(
        30.0, ge=0, help="seconds an unloading model may finish in-flight requests"
    )
    max_queued_per_model: int = setting(
        256,
        ge=0,
        help="requests per model on the proxy's cold path at once (waiting for a load or"
        " running); more get RESOURCE_EXHAUSTED (429 + Retry-After); 0 is unlimited",
    )
    api_key: tuple[str, ...] = setting(
        (),
        env="api_keys",
        metavar="KEY[:RPM[:TPM]]",
        check=parse_key_spec,
        help="an accepted API key with its requests/tokens per minute (repeatable; env"
        " HELIOS_PROXY_API_KEYS, comma-separated); no keys: open access",
    )
    api_keys_file: str = setting("", help="a file of KEY[:RPM[:TPM]] lines, added to --api-key")
    # The edge Envoy's control plane (ADS on the proxy's gRPC port).
    edge_routes: str = setting(
        "",
        metavar="FILE",
        help="the edge's base routes: a JSON list of envoy.config.route.v3.Route (proto3"
        " JSON), served after the per-model routes in the route configuration 'helios'"
        " (they send cold and unknown models to the proxy); written by `helios up`",
    )
    xds_max_requests_per_model: int = setting(
        DEFAULT_MAX_REQUESTS_PER_MODEL,
        ge=1,
        metavar="N",
        help="requests Envoy sends one model's workers at once (its cluster's circuit"
        " breaker); more are answered 503 at the edge",
    )
    xds_local_sockets: bool = setting(
        False,
        help="the edge Envoy runs on the workers' host (a local mesh; `helios up` sets"
        " it): send its streamed REST requests to the Unix sockets the workers report"
        " instead of their TCP REST ports",
    )
    xds_upstream_tls_cert: str = setting("", help=_tls_part("client certificate"))
    xds_upstream_tls_key: str = setting("", help=_tls_part("private key"))
    xds_upstream_tls_ca: str = setting("", help=_tls_part("CA"))
    xds_upstream_tls_sni: str = setting(
        "localhost", help="the server name Envoy sends the workers under TLS"
    )

    def check(self) -> None:
        if self.discovery == "static" and not self.worker:
            raise ConfigError("worker", "at least one worker address is required")
        if self.discovery == "kubernetes" and self.worker:
            raise ConfigError("worker", "--worker is for static discovery, not kubernetes")
        if self.prefetch and not self.registry:
            raise ConfigError("prefetch", "needs --registry (the hints come from it)")
        tls = {
            "xds_upstream_tls_cert": self.xds_upstream_tls_cert,
            "xds_upstream_tls_key": self.xds_upstream_tls_key,
            "xds_upstream_tls_ca": self.xds_upstream_tls_ca,
        }
        missing = [name for name, value in tls.items() if not value]
        if missing and len(missing) < len(tls):
            raise ConfigError(missing[0], "give all of cert, key and ca, or none")

    @property
    def catalogue(self) -> list[ModelSpec]:
        """The ``--model`` entries (checked on construction)."""
        return [parse_model_spec(spec) for spec in self.model]

    @property
    def pools(self) -> dict[str, set[str]]:
        """The ``--k8s-pool`` entries: model -> Deployment names."""
        return parse_pools(self.k8s_pool)

    def namespace(self) -> str:
        """The workers' namespace: ``--k8s-namespace``, else the pod's own, else
        'default'. Reads a file."""
        if self.k8s_namespace:
            return self.k8s_namespace
        try:
            return POD_NAMESPACE_FILE.read_text().strip() or "default"
        except OSError:
            return "default"


def api_keys(settings: ProxySettings) -> list[KeyLimits]:
    """The accepted keys: ``--api-key`` and the lines of ``--api-keys-file`` (read now)."""
    keys = [parse_key_spec(spec) for spec in settings.api_key]
    if settings.api_keys_file:
        try:
            keys += load_key_file(Path(settings.api_keys_file))
        except (ValueError, OSError) as exc:
            raise ConfigError("api_keys_file", str(exc)) from None
    return keys


def xds_settings(settings: ProxySettings) -> XdsSettings:
    """The control plane's settings; reads ``--edge-routes`` (ConfigError when bad)."""
    cert, key, ca = (
        settings.xds_upstream_tls_cert,
        settings.xds_upstream_tls_key,
        settings.xds_upstream_tls_ca,
    )
    tls = (
        UpstreamTls(Path(cert), Path(key), Path(ca), settings.xds_upstream_tls_sni)
        if cert
        else None
    )
    try:
        routes, host = (
            load_edge_virtual_host(Path(settings.edge_routes))
            if settings.edge_routes
            else ((), None)
        )
    except ValueError as exc:
        raise ConfigError("edge_routes", str(exc)) from None
    return XdsSettings(
        max_requests_per_model=settings.xds_max_requests_per_model,
        upstream_tls=tls,
        base_routes=routes,
        base_host=host,
        local_sockets=settings.xds_local_sockets,
    )
