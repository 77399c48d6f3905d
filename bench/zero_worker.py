"""BENCH ONLY: a worker process whose engine is the zero-cost token generator.

Same flags, WorkerService, InferenceService and REST port as ``python -m worker.server``;
models given with ``--model NAME=PATH`` are served by
:class:`bench.zero_engine.ZeroCostEngine` (PATH must be a directory; nothing in it is read
but its weight files' sizes). ``--pace-ms``: one
token per stream every that many milliseconds (default 0: as fast as they are read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bench.zero_engine import ZeroCostEngine
from openai_compat.servicer import InferenceServicer
from runtime.server import Cleanup, Register, run
from runtime.settings import parse_settings
from worker.engine.base import EngineClient
from worker.inference import EngineBackend
from worker.metrics import UsageLedger
from worker.models import ModelManager
from worker.server import build_parser, register_services, start_rest_port
from worker.servicer import WorkerServicer
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    parser.add_argument("--pace-ms", type=float, default=0.0, help="BENCH ONLY: token pacing")
    server, settings = parse_settings(parser, WorkerSettings, "worker", argv)
    pace_s = parser.parse_args(argv).pace_ms / 1e3

    async def _build_engine(name: str, path: Path) -> EngineClient:
        return ZeroCostEngine(name, pace_s)

    async def build() -> tuple[Register, Cleanup]:
        manager = ModelManager(
            _build_engine, engine_kind="zero-cost", capacity_bytes=settings.memory_capacity_bytes
        )
        for name, path in settings.models:
            async for step in manager.load(name, path):
                logger.info(step.message, extra={"model": name})
        usage = UsageLedger()
        inference = InferenceServicer(EngineBackend(manager, usage, role=settings.role))
        rest = await start_rest_port(inference, settings.rest_port, server)
        servicer = WorkerServicer(
            manager,
            worker_id=settings.worker_id,
            usage=usage,
            rest_port=rest.port if rest is not None else 0,
        )

        async def cleanup() -> None:
            if rest is not None:
                await rest.close(grace_s=0)
            await manager.shutdown()

        return register_services(servicer, inference), cleanup

    run(server, build)


if __name__ == "__main__":
    main()
