"""The proxy process: the OpenAI-facing InferenceService, routing to workers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc
from helios.v1 import (
    admin_pb2,
    estimator_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    storage_pb2,
    worker_pb2,
)

from proxy.routing import WorkerPool
from proxy.service import CompletionRouter
from proxy.servicer import InferenceServicer
from proxy.worker_client import GrpcWorkerConnection
from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run
from runtime.unimplemented import unimplemented_handler

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
        help="seconds between heartbeats to each worker",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "proxy")
    if not args.worker:
        raise ConfigError("worker", "at least one worker address is required")
    if args.heartbeat_interval <= 0:
        raise ConfigError("heartbeat_interval", "must be > 0")

    async def build() -> tuple[Register, Cleanup]:
        router = CompletionRouter(
            WorkerPool(args.worker),
            GrpcWorkerConnection,
            heartbeat_interval=args.heartbeat_interval,
        )
        await router.refresh()  # serve a correct model list from the first request
        router.start()
        servicer = InferenceServicer(router)

        def register(server: grpc.aio.Server) -> list[str]:
            inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
            server.add_generic_rpc_handlers(
                (
                    unimplemented_handler(
                        ADMIN, "it arrives with the proxy control-plane issue (#7)"
                    ),
                )
            )
            return [INFERENCE.full_name, ADMIN.full_name]

        return register, router.stop

    run(settings, build, reflection_extra=MESH_SERVICES)


if __name__ == "__main__":
    main()
