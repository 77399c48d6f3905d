"""The estimator process: serves EstimatorService (memory estimates), drains on SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc
from helios.v1 import estimator_pb2, estimator_pb2_grpc

from estimator.models import ModelResolver
from estimator.registry_client import GrpcRegistryConfigs
from estimator.service import MemoryEstimator
from estimator.servicer import EstimatorServicer
from estimator.settings import EstimatorSettings
from runtime.config import add_server_arguments
from runtime.server import Cleanup, Register, run
from runtime.settings import add_arguments, parse_settings

SERVICE_NAME = estimator_pb2.DESCRIPTOR.services_by_name["EstimatorService"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-estimator", description=SERVICE_NAME)
    add_server_arguments(parser, "estimator")
    return add_arguments(parser, EstimatorSettings, "estimator")


async def build_service(settings: EstimatorSettings) -> tuple[Register, Cleanup | None]:
    """The estimator (with the registry client when there is one), inside the loop."""
    registry = GrpcRegistryConfigs(settings.registry) if settings.registry else None
    models = ModelResolver(
        registry,
        settings.model_root,
        ttl_seconds=settings.cache_ttl_seconds,
        resolve_ttl_seconds=settings.resolve_ttl_seconds,
        max_entries=settings.cache_max_entries,
    )
    servicer = EstimatorServicer(
        MemoryEstimator(
            ttl_seconds=settings.cache_ttl_seconds, max_entries=settings.cache_max_entries
        ),
        models,
    )

    def register(server: grpc.aio.Server) -> list[str]:
        estimator_pb2_grpc.add_EstimatorServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return register, (registry.close if registry is not None else None)


def main(argv: Sequence[str] | None = None) -> None:
    server, settings = parse_settings(build_parser(), EstimatorSettings, "estimator", argv)

    async def build() -> tuple[Register, Cleanup | None]:
        return await build_service(settings)

    run(server, build)


if __name__ == "__main__":
    main()
