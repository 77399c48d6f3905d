"""WorkerService over real gRPC (in-process server on port 0) with a fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import FakeEngine, serve_worker

from runtime.paths import PathRoots
from runtime.server import RunningServer
from worker.engine.base import EngineClient
from worker.models import ModelManager
from worker.servicer import WorkerServicer


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    return path


@pytest.fixture
def engines() -> dict[str, FakeEngine]:
    return {}


@pytest.fixture
def manager(engines: dict[str, FakeEngine]) -> ModelManager:
    async def factory(name: str, path: Path) -> EngineClient:
        if (path / "corrupt").exists():
            raise ValueError("config.json: not valid JSON")
        engine = FakeEngine(name, step_delay=0.005)
        engines[name] = engine
        return engine

    return ModelManager(factory, engine_kind="fake", capacity_bytes=1500)


@pytest_asyncio.fixture
async def stub(
    manager: ModelManager, model_dir: Path, tmp_path: Path
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async for _ in manager.load("fake-model", model_dir):
        continue
    # LoadModel's local paths: under this test's directory (--model-root).
    servicer = WorkerServicer(manager, worker_id="w-test", local_roots=PathRoots([tmp_path]))

    running: RunningServer = await serve_worker(servicer)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)
    await running.stop(0)


def request(max_tokens: int = 5, **kwargs: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=str(kwargs.pop("request_id", "r1")),
        model=str(kwargs.pop("model", "fake-model")),
        prompt=str(kwargs.pop("prompt", "hello there")),
        sampling=pb.SamplingParams(max_tokens=max_tokens, top_p=1.0, **kwargs),  # type: ignore[arg-type]
    )


async def test_generate_streams_every_token_then_length(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    responses = [r async for r in stub.Generate(request(max_tokens=5))]
    assert "".join(r.text for r in responses) == "alpha beta gamma delta epsilon "
    assert [r.completion_tokens for r in responses] == [1, 2, 3, 4, 5]
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    assert responses[0].prompt_tokens == len("hello there") // 4 + 1


async def test_generate_chat_and_stop(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    req = request(max_tokens=10, stop=["gamma"])
    req.ClearField("prompt")
    req.chat.messages.add(role="user", content="hi")
    responses = [r async for r in stub.Generate(req)]
    assert "".join(r.text for r in responses) == "alpha beta "
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(max_tokens=0), "sampling.max_tokens"),
        (request(temperature=-1.0), "sampling.temperature"),
        (request(request_id=""), "request_id"),
        (
            pb.GenerateRequest(
                request_id="x",
                model="fake-model",
                sampling=pb.SamplingParams(max_tokens=1, top_p=1),
            ),
            "input",
        ),
    ],
)
async def test_generate_rejects_bad_requests(
    stub: worker_pb2_grpc.WorkerServiceStub, req: pb.GenerateRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.Generate(req)]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


async def test_engine_validation_error_keeps_its_status(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.Generate(request(prompt="too long"))]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_model_is_not_found(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.Generate(request(model="nope"))]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_cancel_stops_the_engine(
    stub: worker_pb2_grpc.WorkerServiceStub, engines: dict[str, FakeEngine]
) -> None:
    engine = engines["fake-model"]
    call = stub.Generate(request(max_tokens=10_000))
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 3:
            break
    call.cancel()
    for _ in range(200):
        if not engine.running:
            break
        await asyncio.sleep(0.01)
    assert not engine.running
    assert engine.aborted_total == 1
    generated = engine.generated
    await asyncio.sleep(0.1)
    assert engine.generated == generated < 10_000


async def test_heartbeat_reports_models_and_memory(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    beat = await stub.Heartbeat(pb.HeartbeatRequest())
    assert beat.worker_id == "w-test"
    assert beat.state == pb.WORKER_STATE_READY
    assert [(m.model, m.state, m.engine) for m in beat.models] == [
        ("fake-model", pb.MODEL_STATE_READY, "fake")
    ]
    # Its load, timed by phase (issue 14): the fake engine reports none of its own.
    assert set(beat.models[0].load_phase_seconds) == {"engine_start"}
    assert beat.memory_total_bytes == 1500
    assert beat.memory_free_bytes == 500


async def test_load_beyond_capacity_is_resource_exhausted(
    stub: worker_pb2_grpc.WorkerServiceStub, model_dir: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [
            r
            async for r in stub.LoadModel(
                pb.LoadModelRequest(model="second", local_path=str(model_dir))
            )
        ]
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unload_then_load_again(
    stub: worker_pb2_grpc.WorkerServiceStub, model_dir: Path
) -> None:
    unloaded = await stub.UnloadModel(pb.UnloadModelRequest(model="fake-model"))
    assert unloaded.aborted_requests == 0
    beat = await stub.Heartbeat(pb.HeartbeatRequest())
    assert beat.state == pb.WORKER_STATE_IDLE and not beat.models
    steps = [
        r
        async for r in stub.LoadModel(
            pb.LoadModelRequest(model="fake-model", local_path=str(model_dir))
        )
    ]
    assert [s.state for s in steps] == [pb.MODEL_STATE_LOADING, pb.MODEL_STATE_READY]
    responses = [r async for r in stub.Generate(request(max_tokens=2))]
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def test_unload_while_streaming_drains_or_aborts(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    call = stub.Generate(request(max_tokens=10_000))
    await call.read()
    unloaded = await stub.UnloadModel(
        pb.UnloadModelRequest(model="fake-model", drain_timeout_seconds=0.05)
    )
    assert unloaded.aborted_requests == 1
    last = await call.read()
    while (following := await call.read()) is not grpc.aio.EOF:
        last = following
    assert last.finish_reason == pb.FINISH_REASON_ABORT


async def test_corrupt_model_fails_load_and_worker_keeps_serving(
    stub: worker_pb2_grpc.WorkerServiceStub, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt").touch()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.LoadModel(pb.LoadModelRequest(model="bad", local_path=str(bad)))]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "config.json" in (info.value.details() or "")
    beat = await stub.Heartbeat(pb.HeartbeatRequest())
    states = {m.model: m.state for m in beat.models}
    assert states == {"fake-model": pb.MODEL_STATE_READY, "bad": pb.MODEL_STATE_FAILED}
    responses = [r async for r in stub.Generate(request(max_tokens=1))]
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def test_missing_directory_is_not_found(
    stub: worker_pb2_grpc.WorkerServiceStub, tmp_path: Path
) -> None:
    # Inside a model root a missing directory is NOT_FOUND; outside every root the same
    # request is PERMISSION_DENIED (tests/worker/test_worker_model_roots.py).
    missing = str(tmp_path / "nonexistent" / "dir")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.LoadModel(pb.LoadModelRequest(model="x", local_path=missing))]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_prefill_and_decode_need_an_engine_that_can_move_kv(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    # The fake engine (like vLLM on CPU) cannot export its KV cache: a clear refusal.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Prefill(pb.PrefillRequest(request=request()))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "disaggregation" in (info.value.details() or "")
    decode = pb.DecodeRequest(
        request=request(), kv_cache_handle="h", prefill_worker="127.0.0.1:1", first_token_id=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.Decode(decode)]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Prefill(pb.PrefillRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_load_of_a_ready_model_is_idempotent(
    stub: worker_pb2_grpc.WorkerServiceStub, model_dir: Path
) -> None:
    steps = [
        r
        async for r in stub.LoadModel(
            pb.LoadModelRequest(model="fake-model", local_path=str(model_dir))
        )
    ]
    assert [s.state for s in steps] == [pb.MODEL_STATE_READY]
    assert steps[0].message == "already loaded"
