"""The worker sends an engine's backlog merged (over real gRPC): chunks produced while a
message was being written go out as one, text and token ids intact, counts and finish
reason from the last; an engine that merges its own backlog (vLLM) is sent as it comes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import FakeEngine, serve_worker

from runtime.server import RunningServer
from worker.engine.base import EngineClient, FinishReason, GenerationChunk, GenerationRequest
from worker.models import ModelManager
from worker.servicer import WorkerServicer

BURST = 50


class BurstEngine(FakeEngine):
    """Produces every chunk at once, never yielding to the event loop in between: all of
    them are waiting before the first one can be written."""

    def __init__(self, name: str, merges_backlog: bool) -> None:
        super().__init__(name)
        self.merges_backlog = merges_backlog

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        n = request.sampling.max_tokens
        for step in range(n):
            finish = FinishReason.LENGTH if step + 1 == n else None
            yield GenerationChunk(f"t{step} ", [step], 3, step + 1, finish)


@pytest_asyncio.fixture(params=[False, True], ids=["plain-engine", "merging-engine"])
async def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[worker_pb2_grpc.WorkerServiceStub, bool]]:
    merges = bool(request.param)

    async def factory(name: str, path: Path) -> EngineClient:
        return BurstEngine(name, merges)

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    manager = ModelManager(factory, engine_kind="fake", capacity_bytes=1000)
    async for _ in manager.load("burst", tmp_path):
        continue
    servicer = WorkerServicer(manager, worker_id="w-burst")

    running: RunningServer = await serve_worker(servicer)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel), merges
    await running.stop(0)
    await manager.shutdown()


async def test_backlog_goes_out_merged_and_intact(
    served: tuple[worker_pb2_grpc.WorkerServiceStub, bool],
) -> None:
    stub, engine_merges = served
    request = pb.GenerateRequest(
        request_id="b1",
        model="burst",
        prompt="go",
        sampling=pb.SamplingParams(max_tokens=BURST, top_p=1.0),
    )
    responses = [r async for r in stub.Generate(request)]
    assert "".join(r.text for r in responses) == "".join(f"t{i} " for i in range(BURST))
    assert [t for r in responses for t in r.token_ids] == list(range(BURST))
    assert [r.completion_tokens for r in responses] == sorted(
        r.completion_tokens for r in responses
    )
    assert responses[-1].completion_tokens == BURST
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    if engine_merges:
        assert len(responses) == BURST  # the engine's own chunks, one message each
    else:
        assert len(responses) < BURST / 5  # the backlog was merged
