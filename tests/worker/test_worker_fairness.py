"""Fairness under load, over real gRPC (issue 16): a worker whose engine takes two
requests at a time, one client flooding it and another sending a few. The engine holds
every request until the test lets it go, so the assertions are on orders and counts,
never on how long anything took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest_asyncio
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as worker_pb
from prometheus_client import REGISTRY
from support.fakes import FakeEngine, serve_worker_inference

from runtime.grpc_errors import RETRY_AFTER_METADATA
from worker.admission import Admission, QueueLimits
from worker.engine.base import EngineClient, GenerationChunk, GenerationRequest
from worker.models import ModelManager

MODEL = "fair-model"
CAPACITY = 2
PER_CLIENT = 8


class HeldEngine(FakeEngine):
    """A FakeEngine of ``CAPACITY`` slots that records each request's prompt as it
    starts and holds it there until :meth:`release`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.max_running_requests = CAPACITY
        self.started: list[str] = []
        self._held: dict[str, asyncio.Event] = {}

    def release(self, prompt: str) -> None:
        self._held[prompt].set()

    def unfinished(self) -> list[str]:
        return [p for p in self.started if not self._held[p].is_set()]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        prompt = request.prompt if request.messages is None else request.messages[-1].content
        assert prompt is not None
        self.started.append(prompt)
        held = self._held[prompt] = asyncio.Event()
        await held.wait()
        async for chunk in super().generate(request):
            yield chunk


class Worker:
    def __init__(self, channel: grpc.aio.Channel, engine: HeldEngine, models: ModelManager):
        self.inference = inference_pb2_grpc.InferenceServiceStub(channel)
        self.control = worker_pb2_grpc.WorkerServiceStub(channel)
        self.engine = engine
        self.models = models

    def chat(
        self, prompt: str, key: str | None, timeout: float | None = None
    ) -> grpc.aio.UnaryUnaryCall:
        params = pb.ChatCompletionParams(model=MODEL, max_tokens=1)
        params.messages.add(role="user").content.string_value = prompt
        metadata = (("authorization", f"Bearer {key}"),) if key else None
        return self.inference.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params), metadata=metadata, timeout=timeout
        )

    def queued(self) -> int:
        return self.models.admission.queued(MODEL)


@pytest_asyncio.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    engines: list[HeldEngine] = []

    async def factory(name: str, path: Path) -> EngineClient:
        engines.append(HeldEngine(name))
        return engines[-1]

    admission = Admission(QueueLimits(per_client=PER_CLIENT, total=64))
    models = ModelManager(factory, engine_kind="fake", capacity_bytes=10_000, admission=admission)
    path = tmp_path / MODEL
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    async for _ in models.load(MODEL, path):
        continue
    running = await serve_worker_inference(models)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Worker(channel, engines[0], models)
    await running.stop(0)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (the server runs on this loop); a generous cap only turns
    a hang into a failure, nothing is asserted about time."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def outcome(call: grpc.aio.UnaryUnaryCall) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK


async def test_a_flood_does_not_starve_a_light_client(worker: Worker) -> None:
    engine = worker.engine
    flood = {f"a{i}": worker.chat(f"a{i}", "key-a") for i in range(40)}
    await until(
        lambda: (
            len(engine.started) == CAPACITY
            and worker.queued() == PER_CLIENT
            and sum(call.done() for call in flood.values()) == 40 - CAPACITY - PER_CLIENT
        ),
        "two of A's requests running, eight queued, the rest refused",
    )
    refused = [name for name, call in flood.items() if call.done()]
    assert len(refused) == 40 - CAPACITY - PER_CLIENT
    for name in refused:
        call = flood[name]
        assert await outcome(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the most one client may queue" in (await call.details() or "")
        assert (RETRY_AFTER_METADATA, "1") in tuple(await call.trailing_metadata() or ())

    light = {f"b{i}": worker.chat(f"b{i}", "key-b") for i in range(3)}
    await until(lambda: worker.queued() == PER_CLIENT + 3, "B's three requests queued")
    # Two of A's queued requests lose their client: they leave the queue at once.
    queued_a = [name for name in flood if name not in refused and name not in engine.started]
    gone = queued_a[-2:]
    for name in gone:
        flood[name].cancel()
    await until(lambda: worker.queued() == PER_CLIENT + 1, "the cancelled requests gone")
    beat = await worker.control.Heartbeat(worker_pb.HeartbeatRequest())
    [served] = beat.models
    assert served.waiting_requests == PER_CLIENT + 1 and beat.queue_depth == PER_CLIENT + 1
    depth = REGISTRY.get_sample_value("helios_worker_queue_depth", {"model": MODEL})
    assert depth == PER_CLIENT + 1

    arrived = len(engine.started)
    while worker.queued():
        count = len(engine.started)
        engine.release(engine.unfinished()[0])
        await until(lambda count=count: len(engine.started) == count + 1, "the next one admitted")  # type: ignore[misc]
    for name in engine.unfinished():
        engine.release(name)
    after = engine.started[arrived:]
    # Each of B's requests waited for at most one of A's: all of B before A's fourth.
    assert sorted(after.index(name) for name in light) == [1, 3, 5]
    assert len(after) == PER_CLIENT - 2 + 3

    outcomes = {name: await outcome(call) for name, call in {**flood, **light}.items()}
    assert [n for n, code in outcomes.items() if code == grpc.StatusCode.CANCELLED] == gone
    assert not set(gone) & set(engine.started)  # never reached the engine
    ok = [n for n, code in outcomes.items() if code == grpc.StatusCode.OK]
    assert sorted(ok) == sorted(engine.started)
    assert len(ok) == CAPACITY + PER_CLIENT - 2 + 3
    assert worker.queued() == 0


async def test_a_deadline_that_passes_while_queued_never_reaches_the_engine(
    worker: Worker,
) -> None:
    engine = worker.engine
    holders = [worker.chat(f"hold{i}", "key-a") for i in range(CAPACITY)]
    await until(lambda: len(engine.started) == CAPACITY, "the engine full")
    late = worker.chat("late", "key-b", timeout=0.5)  # nothing leaves before it expires
    assert await outcome(late) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert worker.queued() == 0
    for name in list(engine.unfinished()):
        engine.release(name)
    assert [await outcome(call) for call in holders] == [grpc.StatusCode.OK] * CAPACITY
    assert "late" not in engine.started


async def test_relayed_generate_takes_its_turn_in_the_same_queue(worker: Worker) -> None:
    """The proxy's WorkerService.Generate (cold requests) shares the engine's slots and
    the queue with the InferenceService requests Envoy routes here."""
    engine = worker.engine

    def generate(prompt: str) -> grpc.aio.UnaryStreamCall:
        return worker.control.Generate(
            worker_pb.GenerateRequest(
                request_id=prompt,
                model=MODEL,
                prompt=prompt,
                sampling=worker_pb.SamplingParams(max_tokens=1, top_p=1.0),
            )
        )

    holders = [worker.chat(f"hold{i}", "key-a") for i in range(CAPACITY)]
    await until(lambda: len(engine.started) == CAPACITY, "the engine full")
    relayed = []
    for i in range(PER_CLIENT):  # one at a time: concurrent calls may arrive in any order
        relayed.append(generate(f"g{i}"))  # no key: anonymous
        await until(lambda i=i: worker.queued() == i + 1, f"g{i} queued")  # type: ignore[misc]
    relayed.append(generate(f"g{PER_CLIENT}"))  # one more than the client's share
    with_trailers = relayed[-1]
    try:
        [r async for r in with_trailers]
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (RETRY_AFTER_METADATA, "1") in tuple(error.trailing_metadata() or ())
    else:
        raise AssertionError("the ninth anonymous request was queued")
    for name in list(engine.unfinished()):
        engine.release(name)
    for i in range(PER_CLIENT):
        await until(lambda i=i: f"g{i}" in engine.started, f"g{i} admitted")  # type: ignore[misc]
        engine.release(f"g{i}")
    for call in relayed[:-1]:
        steps = [r async for r in call]
        assert steps[-1].finish_reason == worker_pb.FINISH_REASON_LENGTH
    assert [await outcome(call) for call in holders] == [grpc.StatusCode.OK] * CAPACITY
    assert engine.started[CAPACITY:] == [f"g{i}" for i in range(PER_CLIENT)]
