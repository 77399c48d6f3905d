"""The estimator process: serves EstimatorService (memory estimates), drains on SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc
from helios.v1 import estimator_pb2, estimator_pb2_grpc

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "estimator")
    if not args.cache_ttl_seconds > 0:
        raise ConfigError("cache_ttl_seconds", "must be > 0")
    if args.cache_max_entries < 1:
        raise ConfigError("cache_max_entries", "must be >= 1")

    async def build() -> tuple[Register, Cleanup | None]:
        servicer = EstimatorServicer(
            MemoryEstimator(ttl_seconds=args.cache_ttl_seconds, max_entries=args.cache_max_entries)
        )

        def register(server: grpc.aio.Server) -> list[str]:
            estimator_pb2_grpc.add_EstimatorServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        return register, None

    run(settings, build)


if __name__ == "__main__":
    main()
