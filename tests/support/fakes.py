"""Test doubles that speak the real interfaces (engine ABC, worker connection)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc.aio
from helios.v1 import worker_pb2_grpc

from openai_compat.servicer import InferenceServicer
from runtime.config import ServerSettings
from runtime.errors import EngineDeadError, InvalidArgumentError
from runtime.server import RunningServer, start_server
from worker.engine.base import (
    EngineClient,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
)
from worker.inference import EngineBackend
from worker.key_usage import KeyUsageLedger
from worker.metrics import UsageLedger
from worker.models import ModelManager
from worker.server import decode_side, register_services
from worker.servicer import WorkerServicer


async def serve(
    service: str, add: Callable[[Any, grpc.aio.Server], None], servicer: object
) -> RunningServer:
    """``servicer`` as helios.v1.``service`` (added by its generated ``add_..._to_server``)
    on 127.0.0.1, port 0, started the way every Helios server is."""

    def register(server: grpc.aio.Server) -> list[str]:
        add(servicer, server)
        return [f"helios.v1.{service}"]

    settings = ServerSettings(service=service.removesuffix("Service").lower(), metrics_port=-1)
    return await start_server(settings, register)


async def serve_worker(servicer: worker_pb2_grpc.WorkerServiceServicer) -> RunningServer:
    """A WorkerService on 127.0.0.1, port 0."""
    return await serve(
        "WorkerService", worker_pb2_grpc.add_WorkerServiceServicer_to_server, servicer
    )


async def serve_worker_inference(
    models: ModelManager, *, worker_id: str = "w-test", role: str = "both"
) -> RunningServer:
    """A worker's two contracts over ``models`` on 127.0.0.1, port 0, as the worker
    process serves them: WorkerService and InferenceService, sharing one usage ledger (a
    decode-role worker serves whole requests with the prefill pools heartbeats hand it)."""
    usage = UsageLedger()
    key_usage = KeyUsageLedger()
    peers, kv_fetcher, split = decode_side(models)
    worker = WorkerServicer(
        models,
        worker_id=worker_id,
        role=role,
        usage=usage,
        kv_fetcher=kv_fetcher,
        prefill_peers=peers,
        key_usage=key_usage,
    )
    inference = InferenceServicer(
        EngineBackend(models, usage, role=role, split=split, key_usage=key_usage)
    )
    settings = ServerSettings(service="worker", metrics_port=-1)
    return await start_server(settings, register_services(worker, inference))


async def start_fake_worker(root: Path, *models: str) -> RunningServer:
    """A worker's servers (serve_worker_inference) with a FakeEngine loaded for each of
    ``models`` (weights files made under ``root``); the caller stops it."""

    async def factory(name: str, path: Path) -> EngineClient:
        return FakeEngine(name)

    manager = ModelManager(factory, engine_kind="fake", capacity_bytes=1_000_000)
    for model in models:
        path = root / model.replace("/", "_")
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"\0" * 100)
        async for _ in manager.load(model, path):
            continue
    return await serve_worker_inference(manager)


@asynccontextmanager
async def fake_worker(root: Path, *models: str) -> AsyncIterator[str]:
    """:func:`start_fake_worker` for the block; yields its address."""
    running = await start_fake_worker(root, *models)
    try:
        yield running.address
    finally:
        await running.stop(0)


WORDS = ("alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta ", "theta ")


class FakeEngine(EngineClient):
    """Produces WORDS in a cycle, one per step, ``step_delay`` seconds apart.

    Prompt tokens = characters of the rendered prompt // 4 + 1, so tests can predict it.
    """

    def __init__(self, name: str = "fake-model", step_delay: float = 0.0) -> None:
        self._name = name
        self.step_delay = step_delay
        self.running: set[str] = set()
        self.aborted: set[str] = set()
        self.generated = 0
        self.aborted_total = 0
        self.dead = False
        self.shut_down = False
        self.fail_after: int | None = None  # raise mid-stream after this many steps

    @property
    def model_name(self) -> str:
        return self._name

    def count_tokens(self, request: GenerationRequest) -> int:
        if request.messages is not None:
            text = "".join(f"{m.role}:{m.content}" for m in request.messages)
        else:
            text = request.prompt or ""
        return len(text) // 4 + 1

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if request.prompt == "too long":
            raise InvalidArgumentError("prompt: longer than the model's context")
        prompt_tokens = self.count_tokens(request)
        self.running.add(request.request_id)
        text = ""
        try:
            for step in range(request.sampling.max_tokens):
                if request.request_id in self.aborted:
                    yield GenerationChunk("", [], prompt_tokens, step, FinishReason.ABORT)
                    return
                if self.fail_after is not None and step >= self.fail_after:
                    raise EngineDeadError("fake engine died")
                await asyncio.sleep(self.step_delay)
                word = WORDS[step % len(WORDS)]
                self.generated += 1
                text += word
                for stop in request.sampling.stop:
                    if stop in text:
                        yield GenerationChunk(
                            "", [step], prompt_tokens, step + 1, FinishReason.STOP
                        )
                        return
                last = step + 1 == request.sampling.max_tokens
                yield GenerationChunk(
                    word,
                    [step],
                    prompt_tokens,
                    step + 1,
                    FinishReason.LENGTH if last else None,
                )
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted_total += 1
            raise
        finally:
            self.running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self.aborted.add(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def stats(self) -> EngineStats:
        return EngineStats(
            running_requests=len(self.running),
            waiting_requests=0,
            generated_tokens_total=self.generated,
            aborted_requests_total=self.aborted_total,
        )

    async def shutdown(self) -> None:
        self.shut_down = True
