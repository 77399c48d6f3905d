"""BENCH ONLY: a worker process whose engine is the zero-cost token generator.

Same flags, WorkerService and InferenceService as ``python -m worker.server``; models given with
``--model NAME=PATH`` are served by :class:`bench.zero_engine.ZeroCostEngine` (PATH must
be a directory; nothing in it is read but its weight files' sizes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bench.zero_engine import ZeroCostEngine
from openai_compat.servicer import InferenceServicer
from runtime.config import settings_from_args
from runtime.server import Cleanup, Register, run
from worker.engine.base import EngineClient
from worker.inference import EngineBackend
from worker.metrics import UsageLedger
from worker.models import ModelManager
from worker.server import build_parser, parse_model_spec, register_services
from worker.servicer import WorkerServicer

logger = logging.getLogger(__name__)


async def _build_engine(name: str, path: Path) -> EngineClient:
    return ZeroCostEngine(name)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "worker")
    models = [parse_model_spec(spec) for spec in args.model]

    async def build() -> tuple[Register, Cleanup]:
        manager = ModelManager(
            _build_engine, engine_kind="zero-cost", capacity_bytes=args.memory_capacity_bytes
        )
        for name, path in models:
            async for step in manager.load(name, path):
                logger.info(step.message, extra={"model": name})
        usage = UsageLedger()
        servicer = WorkerServicer(manager, worker_id=args.worker_id, usage=usage)
        inference = InferenceServicer(EngineBackend(manager, usage, role=args.role))
        return register_services(servicer, inference), manager.shutdown

    run(settings, build)


if __name__ == "__main__":
    main()
