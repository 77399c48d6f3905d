"""The estimator process: serves EstimatorService (memory estimates), drains on SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import grpc
from helios.v1 import estimator_pb2, estimator_pb2_grpc

from estimator.models import DEFAULT_RESOLVE_TTL_SECONDS, ModelResolver
from estimator.registry_client import GrpcRegistryConfigs
from estimator.service import DEFAULT_TTL_SECONDS, MemoryEstimator
from estimator.servicer import EstimatorServicer
from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run

SERVICE_NAME = estimator_pb2.DESCRIPTOR.services_by_name["EstimatorService"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-estimator", description=SERVICE_NAME)
    add_server_arguments(parser, "estimator")
    parser.add_argument(
        "--cache-ttl-seconds",
        type=float,
        default=float(env_default("estimator", "cache_ttl_seconds", str(DEFAULT_TTL_SECONDS))),
        help="how long an estimate stays cached (env HELIOS_ESTIMATOR_CACHE_TTL_SECONDS)",
    )
    parser.add_argument(
        "--cache-max-entries",
        type=int,
        default=int(env_default("estimator", "cache_max_entries", "8192")),
        help="estimates kept at most (least recently used go first)",
    )
    parser.add_argument(
        "--registry",
        default=env_default("estimator", "registry", ""),
        metavar="HOST:PORT",
        help="the registry service: model ids resolve through it first (env"
        " HELIOS_ESTIMATOR_REGISTRY)",
    )
    roots = env_default("estimator", "model_roots")
    parser.add_argument(
        "--model-root",
        action="append",
        type=Path,
        default=[Path(r) for r in roots.split(",")] if roots else [],
        metavar="DIR",
        help="a directory whose HF-layout model directories may be named as model ids"
        " (repeatable; env HELIOS_ESTIMATOR_MODEL_ROOTS, comma-separated); nothing"
        " outside these roots is read",
    )
    parser.add_argument(
        "--resolve-ttl-seconds",
        type=float,
        default=float(
            env_default("estimator", "resolve_ttl_seconds", str(DEFAULT_RESOLVE_TTL_SECONDS))
        ),
        help="how long a model id's resolved version is remembered (aliases move)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "estimator")
    if not args.cache_ttl_seconds > 0:
        raise ConfigError("cache_ttl_seconds", "must be > 0")
    if args.cache_max_entries < 1:
        raise ConfigError("cache_max_entries", "must be >= 1")

    if not args.resolve_ttl_seconds > 0:
        raise ConfigError("resolve_ttl_seconds", "must be > 0")
    for root in args.model_root:
        if not root.expanduser().is_dir():
            raise ConfigError("model_root", f"{root} is not a directory")

    async def build() -> tuple[Register, Cleanup | None]:
        registry = GrpcRegistryConfigs(args.registry) if args.registry else None
        models = ModelResolver(
            registry,
            args.model_root,
            ttl_seconds=args.cache_ttl_seconds,
            resolve_ttl_seconds=args.resolve_ttl_seconds,
            max_entries=args.cache_max_entries,
        )
        servicer = EstimatorServicer(
            MemoryEstimator(ttl_seconds=args.cache_ttl_seconds, max_entries=args.cache_max_entries),
            models,
        )

        def register(server: grpc.aio.Server) -> list[str]:
            estimator_pb2_grpc.add_EstimatorServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        return register, (registry.close if registry is not None else None)

    run(settings, build)


if __name__ == "__main__":
    main()
