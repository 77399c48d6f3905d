"""The worker process: builds the engine(s), serves WorkerService, drains on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import grpc
from helios.v1 import worker_pb2, worker_pb2_grpc

from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run
from worker.engine.base import EngineClient
from worker.models import EngineFactory, ModelManager
from worker.servicer import WorkerServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
DEFAULT_CAPACITY_BYTES = 8 * 1024**3


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError("model", f"expected NAME=PATH, got {spec!r}")
    return name, Path(path)


def transformers_engine_factory(max_concurrency: int) -> EngineFactory:
    """The CPU reference engine; imported lazily so that torch loads only when used."""

    async def build(name: str, path: Path) -> EngineClient:
        from worker.engine.transformers_engine import TransformersEngine

        return await TransformersEngine.load(path, name, max_concurrency=max_concurrency)

    return build


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-worker", description=SERVICE_NAME)
    add_server_arguments(parser, "worker")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load this HF-layout model directory at start-up under NAME (repeatable)",
    )
    parser.add_argument(
        "--worker-id",
        default=env_default("worker", "worker_id") or f"{socket.gethostname()}-{os.getpid()}",
    )
    parser.add_argument(
        "--memory-capacity-bytes",
        type=int,
        default=int(env_default("worker", "memory_capacity_bytes", str(DEFAULT_CAPACITY_BYTES))),
        help="memory this worker offers for weights (no GPU here: the scheduler uses this)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=int(env_default("worker", "max_concurrency", "4")),
        help="requests computed at once per model; more wait in the engine's queue",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "worker")
    models = [parse_model_spec(spec) for spec in args.model]
    if args.memory_capacity_bytes <= 0:
        raise ConfigError("memory_capacity_bytes", "must be > 0")
    if args.max_concurrency < 1:
        raise ConfigError("max_concurrency", "must be >= 1")

    async def build() -> tuple[Register, Cleanup]:
        manager = ModelManager(
            transformers_engine_factory(args.max_concurrency),
            engine_kind="transformers",
            capacity_bytes=args.memory_capacity_bytes,
        )
        for name, path in models:
            async for step in manager.load(name, path):
                logger.info(step.message, extra={"model": name, "state": step.state.value})
        servicer = WorkerServicer(manager, worker_id=args.worker_id)

        def register(server: grpc.aio.Server) -> list[str]:
            worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        return register, manager.shutdown

    run(settings, build)


if __name__ == "__main__":
    main()
