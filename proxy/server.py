"""The proxy process: the OpenAI-facing InferenceService, routing to workers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
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
from proxy.control import ControlPlane, ModelSpec, parse_model_spec
from proxy.discovery import StaticDiscovery
from proxy.estimate import MemoryEstimator
from proxy.limits import Admission, ApiKeys, KeyLimits, load_key_file, parse_key_spec
from proxy.policies import POLICIES, policy_by_name
from proxy.registry import DEFAULT_USAGE_INTERVAL_S, RegistryCatalogue, UsageReporter
from proxy.registry_client import GrpcRegistryClient
from proxy.routing import WorkerPool
from proxy.service import CompletionRouter
from proxy.servicer import DEFAULT_SESSION_HEADER, InferenceServicer
from proxy.worker_client import GrpcEstimatorClient, GrpcWorkerConnection
from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run

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
        help="a worker's gRPC address (repeatable; env HELIOS_PROXY_WORKERS, comma-separated)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(env_default("proxy", "heartbeat_interval", "1.0")),
        help="seconds between heartbeats to each worker (and warm-pool upkeep passes)",
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
        choices=sorted(POLICIES),
        help="how a READY replica is chosen",
    )
    parser.add_argument(
        "--session-header",
        default=env_default("proxy", "session_header", DEFAULT_SESSION_HEADER),
        help="request header carrying the session id (session-affinity policy)",
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
        help="requests per model in the proxy at once (waiting or running); more get"
        " RESOURCE_EXHAUSTED (429 + Retry-After); 0 is unlimited",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=int(env_default("proxy", "max_retries", "2")),
        help="retries on another replica when a worker fails before the first token",
    )
    parser.add_argument(
        "--breaker-failures",
        type=int,
        default=int(env_default("proxy", "breaker_failures", "3")),
        help="consecutive request failures that open a worker's circuit breaker",
    )
    parser.add_argument(
        "--breaker-reset",
        type=float,
        default=float(env_default("proxy", "breaker_reset", "5")),
        help="seconds an open circuit waits before one half-open probe",
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
    return parser


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
    if not args.worker:
        raise ConfigError("worker", "at least one worker address is required")
    if args.heartbeat_interval <= 0:
        raise ConfigError("heartbeat_interval", "must be > 0")
    if args.idle_ttl < 0 or args.load_timeout <= 0 or args.drain_timeout < 0:
        raise ConfigError("idle_ttl", "idle/drain must be >= 0 and load_timeout > 0")
    if args.prefetch < 0 or args.usage_interval <= 0:
        raise ConfigError("prefetch", "prefetch must be >= 0 and usage_interval > 0")
    if args.prefetch and not args.registry:
        raise ConfigError("prefetch", "needs --registry (the hints come from it)")
    if args.max_retries < 0 or args.max_queued_per_model < 0 or args.breaker_failures < 1:
        raise ConfigError("max_retries", "retries/queue must be >= 0, breaker failures >= 1")
    catalogue = _catalogue(args.model)
    keys = _keys(args)

    async def build() -> tuple[Register, Cleanup]:
        router = build_router(args, catalogue, keys)
        if router.control.registry is not None:
            await router.control.registry.refresh()
        await router.refresh()  # serve a correct model list from the first request
        router.start()
        servicer = InferenceServicer(router, session_header=args.session_header.lower())
        admin = AdminServicer(router.control)

        def register(server: grpc.aio.Server) -> list[str]:
            inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
            admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
            return [INFERENCE.full_name, ADMIN.full_name]

        return register, router.stop

    run(settings, build, reflection_extra=MESH_SERVICES)


def build_router(
    args: argparse.Namespace, catalogue: Sequence[ModelSpec], keys: Sequence[KeyLimits]
) -> CompletionRouter:
    """The router and its control plane from parsed flags."""
    discovery = StaticDiscovery(args.worker)
    pool = WorkerPool(
        policy=policy_by_name(args.routing_policy),
        breaker_threshold=args.breaker_failures,
        breaker_reset_s=args.breaker_reset,
    )
    estimator = MemoryEstimator(GrpcEstimatorClient(args.estimator) if args.estimator else None)
    registry_client = GrpcRegistryClient(args.registry) if args.registry else None
    registry = RegistryCatalogue(registry_client) if registry_client is not None else None
    usage = (
        UsageReporter(registry_client, interval_s=args.usage_interval)
        if registry_client is not None
        else None
    )
    router = CompletionRouter(
        pool,
        GrpcWorkerConnection,
        heartbeat_interval=args.heartbeat_interval,
        discovery=discovery,
        api_keys=ApiKeys(keys),
        admission=Admission(args.max_queued_per_model),
        max_retries=args.max_retries,
        usage=usage,
    )
    router.control = ControlPlane(
        pool,
        router.connections,
        catalogue,
        estimator,
        refresh=router.beat,
        idle_ttl_s=args.idle_ttl,
        load_timeout_s=args.load_timeout,
        drain_s=args.drain_timeout,
        registry=registry,
        prefetch=args.prefetch,
    )
    return router


if __name__ == "__main__":
    main()
