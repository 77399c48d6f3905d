"""The proxy process: the edge Envoy's xDS control plane (ADS), the cold path's
InferenceService (what Envoy has no warm route for) and AdminService."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    estimator_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    storage_pb2,
    worker_pb2,
)

from proxy.admin import AdminServicer
from proxy.cold_start import ModelSpec, PoolScaler, parse_model_spec
from proxy.control import ControlPlane
from proxy.dependencies import DependencyMonitor
from proxy.discovery import DiscoverySource, KubernetesDiscovery, StaticDiscovery
from proxy.estimate import MemoryEstimator
from proxy.fleet import WorkerPool
from proxy.health_client import GrpcHealthWatch
from proxy.heartbeats import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_HEARTBEAT_TIMEOUT_S
from proxy.limits import Admission, ApiKeys, KeyLimits, load_key_file, parse_key_spec
from proxy.registry import DEFAULT_USAGE_INTERVAL_S, RegistryCatalogue, UsageReporter
from proxy.registry_client import GrpcRegistryClient
from proxy.service_health import ServiceHealthMirror
from proxy.servicer import InferenceServicer
from proxy.status import RecentErrors
from proxy.status_probe import StatusReporter
from proxy.warm_pools import DEFAULT_RECONCILE_INTERVAL_S
from proxy.worker_client import GrpcEstimatorClient, GrpcWorkerConnection
from proxy.xds_resources import (
    DEFAULT_MAX_REQUESTS_PER_MODEL,
    DEFAULT_SYNC_GRACE_S,
    UpstreamTls,
    XdsSettings,
    load_edge_virtual_host,
)
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import DEFAULT_SESSION_HEADER, ROUTING_POLICIES, lb_policy_for
from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run, server_health

# Where a pod finds its own namespace (the service account's mount).
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DISCOVERY_MODES = ("static", "kubernetes")
# The status page lists the registry's models as listed at most this long ago.
KNOWN_MODELS_MAX_AGE_S = 5.0

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
# The proxy sits behind Envoy's one front door, where reflection requests land: it
# describes every helios.v1 service so `grpcurl list` there shows the whole mesh.
MESH_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (worker_pb2, "WorkerService"),
        (estimator_pb2, "EstimatorService"),
        (registry_pb2, "RegistryService"),
        (storage_pb2, "StorageService"),
    )
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-proxy", description=INFERENCE.full_name)
    add_server_arguments(parser, "proxy")
    workers = env_default("proxy", "workers")
    parser.add_argument(
        "--worker",
        action="append",
        default=workers.split(",") if workers else [],
        metavar="HOST:PORT",
        help="a worker's gRPC address (repeatable; env HELIOS_PROXY_WORKERS, comma-separated);"
        " static discovery only",
    )
    parser.add_argument(
        "--discovery",
        default=env_default("proxy", "discovery", "static"),
        choices=DISCOVERY_MODES,
        help="where the workers come from: the --worker list, or the EndpointSlices of the"
        " worker Services in --k8s-namespace (env HELIOS_PROXY_DISCOVERY); with"
        " kubernetes, a model's pool (its Deployment) scales to zero when idle and back"
        " on demand",
    )
    parser.add_argument(
        "--k8s-namespace",
        default=env_default("proxy", "k8s_namespace", ""),
        help="the workers' namespace (env HELIOS_PROXY_K8S_NAMESPACE); default: the pod's"
        " own, else 'default'",
    )
    parser.add_argument(
        "--k8s-worker-selector",
        default=env_default("proxy", "k8s_worker_selector", "app.kubernetes.io/component=worker"),
        help="label selector of the worker Services' EndpointSlices"
        " (env HELIOS_PROXY_K8S_WORKER_SELECTOR)",
    )
    parser.add_argument(
        "--kubeconfig",
        default=env_default("proxy", "kubeconfig", ""),
        help="a kubeconfig file, when not running in a pod (default: $KUBECONFIG, then"
        " ~/.kube/config); in a pod the service account is used",
    )
    pools = env_default("proxy", "k8s_pools")
    parser.add_argument(
        "--k8s-pool",
        action="append",
        default=pools.split(",") if pools else [],
        metavar="MODEL=DEPLOYMENT",
        help="the Deployment running MODEL's workers, for pools that may be at zero when"
        " the proxy starts (repeatable; env HELIOS_PROXY_K8S_POOLS, comma-separated);"
        " pools whose endpoints the proxy has seen are known anyway (the Deployment is"
        " named like its worker Service)",
    )
    parser.add_argument(
        "--k8s-resync",
        type=float,
        default=float(env_default("proxy", "k8s_resync", "300")),
        help="seconds between full relists of the EndpointSlices (the watch resumes between)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(
            env_default("proxy", "heartbeat_interval", str(DEFAULT_HEARTBEAT_INTERVAL_S))
        ),
        help="seconds between heartbeats to each worker; a worker whose heartbeat fails"
        " leaves Envoy's endpoints at once (and comes back with its next good one)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=float(env_default("proxy", "heartbeat_timeout", str(DEFAULT_HEARTBEAT_TIMEOUT_S))),
        help="seconds a worker has to answer a heartbeat before it counts as failed",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=float,
        default=float(
            env_default("proxy", "reconcile_interval", str(DEFAULT_RECONCILE_INTERVAL_S))
        ),
        help="seconds between warm-pool passes (min replicas, scale-up, idle unloads, prefetch)",
    )
    models = env_default("proxy", "models")
    parser.add_argument(
        "--model",
        action="append",
        default=models.split(";") if models else [],
        metavar="NAME=PATH[,min=N][,max=M]",
        help="a model the proxy may load on demand from PATH (on the workers' host),"
        " with its warm replicas (repeatable; env HELIOS_PROXY_MODELS, ';'-separated)",
    )
    parser.add_argument(
        "--estimator",
        default=env_default("proxy", "estimator", ""),
        metavar="HOST:PORT",
        help="the estimator service; without it memory needs are the weights' bytes",
    )
    parser.add_argument(
        "--registry",
        default=env_default("proxy", "registry", ""),
        metavar="HOST:PORT",
        help="the registry service: /v1/models lists what it holds, a request for any of"
        " its models cold-starts it (the worker fetches it through storaged), usage is"
        " reported to it, and its eviction candidates order evictions (env"
        " HELIOS_PROXY_REGISTRY)",
    )
    parser.add_argument(
        "--storaged",
        default=env_default("proxy", "storaged", ""),
        metavar="HOST:PORT",
        help="a storaged service whose state /v1/health reports (health checks only: the"
        " workers fetch through it, the proxy never does; env HELIOS_PROXY_STORAGED)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=int(env_default("proxy", "prefetch", "0")),
        metavar="N",
        help="ask the registry for N prefetch hints each warm-pool pass and preload the"
        " first that fits in free memory (needs --registry); 0 turns prefetching off",
    )
    parser.add_argument(
        "--usage-interval",
        type=float,
        default=float(env_default("proxy", "usage_interval", str(DEFAULT_USAGE_INTERVAL_S))),
        help="seconds between usage reports to the registry (batched, in the background)",
    )
    parser.add_argument(
        "--routing-policy",
        default=env_default("proxy", "routing_policy", "least-outstanding"),
        choices=ROUTING_POLICIES,
        help="how Envoy chooses a READY replica: least request weighted by load"
        " (least-outstanding), consistent hashing on the prompt prefix with bounded load"
        " (prefix-aware), or on the session header (session-affinity)",
    )
    parser.add_argument(
        "--session-header",
        default=env_default("proxy", "session_header", DEFAULT_SESSION_HEADER),
        help="request header carrying the session id (session-affinity policy)",
    )
    parser.add_argument(
        "--target-concurrency",
        type=int,
        default=int(env_default("proxy", "target_concurrency", "8")),
        metavar="N",
        help="requests per READY replica above which a model gets one more replica (up to"
        " its max replicas, where memory is free); 0 turns scale-up under load off",
    )
    parser.add_argument(
        "--idle-ttl",
        type=float,
        default=float(env_default("proxy", "idle_ttl", "300")),
        help="seconds a replica may sit idle before it is unloaded (down to the model's"
        " min replicas); 0 never unloads",
    )
    parser.add_argument(
        "--load-timeout",
        type=float,
        default=float(env_default("proxy", "load_timeout", "300")),
        help="the most a request waits for a cold model to load",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=float(env_default("proxy", "drain_timeout", "30")),
        help="seconds an unloading model may finish in-flight requests",
    )
    parser.add_argument(
        "--max-queued-per-model",
        type=int,
        default=int(env_default("proxy", "max_queued_per_model", "256")),
        help="requests per model on the proxy's cold path at once (waiting for a load or"
        " running); more get RESOURCE_EXHAUSTED (429 + Retry-After); 0 is unlimited",
    )
    keys = env_default("proxy", "api_keys")
    parser.add_argument(
        "--api-key",
        action="append",
        default=keys.split(",") if keys else [],
        metavar="KEY[:RPM[:TPM]]",
        help="an accepted API key with its requests/tokens per minute (repeatable; env"
        " HELIOS_PROXY_API_KEYS, comma-separated); no keys: open access",
    )
    parser.add_argument(
        "--api-keys-file",
        default=env_default("proxy", "api_keys_file", ""),
        help="a file of KEY[:RPM[:TPM]] lines, added to --api-key",
    )
    add_xds_arguments(parser)
    return parser


def add_xds_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the edge Envoy's control plane (ADS on the proxy's gRPC port)."""
    parser.add_argument(
        "--edge-routes",
        default=env_default("proxy", "edge_routes", ""),
        metavar="FILE",
        help="the edge's base routes: a JSON list of envoy.config.route.v3.Route (proto3"
        " JSON), served after the per-model routes in the route configuration 'helios'"
        " (they send cold and unknown models to the proxy); written by `helios up`",
    )
    parser.add_argument(
        "--xds-max-requests-per-model",
        type=int,
        default=int(
            env_default("proxy", "xds_max_requests_per_model", str(DEFAULT_MAX_REQUESTS_PER_MODEL))
        ),
        metavar="N",
        help="requests Envoy sends one model's workers at once (its cluster's circuit"
        " breaker); more are answered 503 at the edge",
    )
    for part, what in (("cert", "client certificate"), ("key", "private key"), ("ca", "CA")):
        parser.add_argument(
            f"--xds-upstream-tls-{part}",
            default=env_default("proxy", f"xds_upstream_tls_{part}", ""),
            help=f"the {what} Envoy uses for mutual TLS to the workers (all three of"
            " cert/key/ca, or none: plain h2c)",
        )
    parser.add_argument(
        "--xds-upstream-tls-sni",
        default=env_default("proxy", "xds_upstream_tls_sni", "localhost"),
        help="the server name Envoy sends the workers under TLS",
    )


def xds_settings(args: argparse.Namespace) -> XdsSettings:
    """The control plane's settings from parsed flags (ConfigError when they are bad)."""
    if args.xds_max_requests_per_model < 1:
        raise ConfigError("xds_max_requests_per_model", "must be >= 1")
    parts = (args.xds_upstream_tls_cert, args.xds_upstream_tls_key, args.xds_upstream_tls_ca)
    if any(parts) and not all(parts):
        raise ConfigError("xds_upstream_tls", "give all of cert, key and ca, or none")
    tls = (
        UpstreamTls(Path(parts[0]), Path(parts[1]), Path(parts[2]), args.xds_upstream_tls_sni)
        if all(parts)
        else None
    )
    try:
        routes, host = (
            load_edge_virtual_host(Path(args.edge_routes)) if args.edge_routes else ((), None)
        )
    except ValueError as exc:
        raise ConfigError("edge_routes", str(exc)) from None
    return XdsSettings(
        max_requests_per_model=args.xds_max_requests_per_model,
        upstream_tls=tls,
        base_routes=routes,
        base_host=host,
    )


def _catalogue(specs: Sequence[str]) -> list[ModelSpec]:
    result = []
    for spec in specs:
        try:
            result.append(parse_model_spec(spec))
        except ValueError as exc:
            raise ConfigError("model", str(exc)) from None
    return result


def _keys(args: argparse.Namespace) -> list[KeyLimits]:
    try:
        keys = [parse_key_spec(spec) for spec in args.api_key if spec]
        if args.api_keys_file:
            keys += load_key_file(Path(args.api_keys_file))
    except (ValueError, OSError) as exc:
        raise ConfigError("api_keys", str(exc)) from None
    return keys


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "proxy")
    check_discovery(args)
    check_ranges(args)
    if args.prefetch and not args.registry:
        raise ConfigError("prefetch", "needs --registry (the hints come from it)")
    catalogue = _catalogue(args.model)
    keys = _keys(args)
    xds_settings(args)  # bad xDS flags fail before anything starts

    async def build() -> tuple[Register, Cleanup]:
        return await build_service(args, catalogue, keys)

    run(settings, build, reflection_extra=MESH_SERVICES)


# Each numeric flag's field name, its bound, and whether the bound itself is allowed.
_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("heartbeat_interval", 0.0, False),
    ("heartbeat_timeout", 0.0, False),
    ("reconcile_interval", 0.0, False),
    ("usage_interval", 0.0, False),
    ("load_timeout", 0.0, False),
    ("idle_ttl", 0.0, True),
    ("drain_timeout", 0.0, True),
    ("target_concurrency", 0.0, True),
    ("prefetch", 0.0, True),
    ("max_queued_per_model", 0.0, True),
)


def check_ranges(args: argparse.Namespace) -> None:
    """Every numeric flag within its range; a ConfigError names the one that is not."""
    for field, bound, inclusive in _RANGES:
        value = getattr(args, field)
        if not (value >= bound if inclusive else value > bound):  # NaN fails both
            raise ConfigError(field, f"must be {'>=' if inclusive else '>'} {bound:g}, got {value}")


def check_discovery(args: argparse.Namespace) -> None:
    """The discovery flags make sense together (ConfigError otherwise)."""
    workers = [w for w in args.worker if w]
    if args.discovery == "static" and not workers:
        raise ConfigError("worker", "at least one worker address is required")
    if args.discovery == "kubernetes":
        if workers:
            raise ConfigError("worker", "--worker is for static discovery, not kubernetes")
        if args.k8s_resync <= 0:
            raise ConfigError("k8s_resync", "must be > 0")
        try:
            parse_pools(args.k8s_pool)
        except ValueError as exc:
            raise ConfigError("k8s_pool", str(exc)) from None


def parse_pools(specs: Sequence[str]) -> dict[str, set[str]]:
    """``MODEL=DEPLOYMENT`` specs -> model -> Deployment names."""
    pools: dict[str, set[str]] = {}
    for spec in filter(None, specs):
        model, sep, deployment = spec.partition("=")
        if not sep or not model or not deployment:
            raise ValueError(f"expected MODEL=DEPLOYMENT, got {spec!r}")
        pools.setdefault(model, set()).add(deployment)
    return pools


def k8s_namespace(args: argparse.Namespace) -> str:
    if args.k8s_namespace:
        return str(args.k8s_namespace)
    try:
        return POD_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


async def build_service(
    args: argparse.Namespace, catalogue: Sequence[ModelSpec], keys: Sequence[KeyLimits]
) -> tuple[Register, Cleanup]:
    """Discovery, control plane, xDS and servicers from parsed flags, started (inside
    the running loop): what ``main`` serves, and what tests serve in-process."""
    check_discovery(args)
    discovery: DiscoverySource
    scaler: PoolScaler | None = None
    closers: list[Cleanup] = []
    if args.discovery == "kubernetes":
        # Imported here: static mode needs no Kubernetes client.
        from proxy.k8s import (
            DeploymentPools,
            DeploymentScaler,
            EndpointSliceWatcher,
            load_api_client,
        )

        api = await load_api_client(args.kubeconfig or os.environ.get("KUBECONFIG") or None)
        closers.append(api.close)
        namespace = k8s_namespace(args)
        watcher = EndpointSliceWatcher(
            api, namespace, args.k8s_worker_selector, resync_seconds=args.k8s_resync
        )
        kube = KubernetesDiscovery(watcher, pools=parse_pools(args.k8s_pool))
        kube.start()
        closers.insert(0, kube.close)
        scaler = DeploymentPools(DeploymentScaler(api, namespace), kube.pools)
        discovery = kube
    else:
        discovery = StaticDiscovery(args.worker)
    plane = build_control_plane(args, catalogue, keys, discovery=discovery, scaler=scaler)
    try:
        if plane.cold.registry is not None:
            await plane.cold.registry.refresh()
        await plane.refresh()  # serve a correct model list from the first request
    except BaseException:
        for close in closers:
            await close()
        raise
    plane.start()
    servicer = InferenceServicer(plane.serving)
    # /v1/health: each dependency's state from a health watch of its own (down the moment
    # its connection drops); the workers' from the heartbeats.
    watches = {
        name: GrpcHealthWatch(address)
        for name, address in (
            ("registry", args.registry),
            ("estimator", args.estimator),
            ("storaged", args.storaged),
        )
        if address
    }
    dependencies = DependencyMonitor(watches)
    dependencies.start()
    status = StatusReporter(
        plane.pool,
        lambda: _known_models(plane),
        dependencies=dependencies,
        storaged=args.storaged or "",
        errors=_recent_errors(),
    )
    admin = AdminServicer(plane.warm, dependencies, status)
    # Health per service name at the front door (grpc.health.v1 Check/Watch of any
    # helios.v1 service): from the same watches and the heartbeats.
    service_health = ServiceHealthMirror(
        {"registry": MESH_SERVICES[2], "estimator": MESH_SERVICES[1], "storaged": MESH_SERVICES[3]},
        MESH_SERVICES[0],
        plane.pool,
        dependencies,
    )
    # The edge Envoy's control plane: every model's workers, pushed on each fleet change.
    policy = lb_policy_for(args.routing_policy, session_header=args.session_header)
    xds = XdsServer(
        plane.pool,
        xds_settings(args),
        policy_for=lambda model: policy,
        sync_grace_s=DEFAULT_SYNC_GRACE_S,
        throttled_keys=plane.serving.api_keys.exhausted,
    )
    xds.start()

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        service_health.attach(server_health(server))
        return [INFERENCE.full_name, ADMIN.full_name, xds.register(server)]

    async def cleanup() -> None:
        await service_health.stop()
        await status.close()
        await dependencies.stop()
        for watch in watches.values():
            await watch.close()
        await xds.stop()
        await plane.stop()
        for close in closers:
            await close()

    return register, cleanup


def _recent_errors() -> RecentErrors:
    """The status page's recent errors: this process's WARNING and ERROR records."""
    handler = RecentErrors()
    logging.getLogger().addHandler(handler)
    return handler


async def _known_models(plane: ControlPlane) -> list[str]:
    """The models the proxy may serve beside what the workers hold: its catalogue and
    the registry's (listed again when the last listing is a few seconds old)."""
    registry = plane.cold.registry
    held: Mapping[str, object] = {}
    if registry is not None:
        stale = time.monotonic() - registry.listed_at > KNOWN_MODELS_MAX_AGE_S
        held = await registry.refresh() if stale else registry.models
    return sorted({*plane.cold.catalogue, *held})


def build_control_plane(
    args: argparse.Namespace,
    catalogue: Sequence[ModelSpec],
    keys: Sequence[KeyLimits],
    *,
    discovery: DiscoverySource | None = None,
    scaler: PoolScaler | None = None,
) -> ControlPlane:
    """The fleet, cold path and warm pools from parsed flags (static discovery from
    ``--worker`` unless ``discovery`` is given); not started."""
    registry_client = GrpcRegistryClient(args.registry) if args.registry else None
    return ControlPlane.create(
        WorkerPool(),
        GrpcWorkerConnection,
        catalogue,
        MemoryEstimator(GrpcEstimatorClient(args.estimator) if args.estimator else None),
        discovery=discovery or StaticDiscovery(args.worker),
        heartbeat_interval_s=args.heartbeat_interval,
        heartbeat_timeout_s=args.heartbeat_timeout,
        reconcile_interval_s=args.reconcile_interval,
        registry=RegistryCatalogue(registry_client) if registry_client is not None else None,
        usage=(
            UsageReporter(registry_client, interval_s=args.usage_interval)
            if registry_client is not None
            else None
        ),
        scaler=scaler,
        api_keys=ApiKeys(keys),
        admission=Admission(args.max_queued_per_model),
        idle_ttl_s=args.idle_ttl,
        load_timeout_s=args.load_timeout,
        drain_s=args.drain_timeout,
        prefetch=args.prefetch,
        target_concurrency=args.target_concurrency,
    )


if __name__ == "__main__":
    main()
