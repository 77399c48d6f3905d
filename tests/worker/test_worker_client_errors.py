"""A client's degenerate or faulty request against a real worker (the reference engine
on the tiny model, WorkerService over real gRPC on port 0): degenerate sampling values
are served (a temperature of 1e-45 is greedy), faulty requests answer INVALID_ARGUMENT,
and neither ever makes the worker report itself unhealthy (issue 16, item 3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import serve_worker

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.server import RunningServer
from worker.engine.base import EngineClient
from worker.engine.transformers_engine import TransformersEngine
from worker.models import ModelManager
from worker.servicer import WorkerServicer

MODEL = "tiny"
NAN = float("nan")
INF = float("inf")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The path the other worker tests use: the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest_asyncio.fixture
async def stub(tiny_model_dir: Path) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async def factory(name: str, path: Path) -> EngineClient:
        return await TransformersEngine.load(path, name)

    manager = ModelManager(factory, engine_kind="transformers", capacity_bytes=1 << 34)
    async for _ in manager.load(MODEL, tiny_model_dir):
        continue
    running: RunningServer = await serve_worker(WorkerServicer(manager, worker_id="w-client"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield worker_pb2_grpc.WorkerServiceStub(channel)
    finally:
        await running.stop(0)
        await manager.unload(MODEL, 1.0)


def request(request_id: str, max_tokens: int = 8, **sampling: object) -> pb.GenerateRequest:
    params = {"temperature": 0.0, "top_p": 1.0, "ignore_eos": True, **sampling}
    return pb.GenerateRequest(
        request_id=request_id,
        model=MODEL,
        prompt="Once upon a time",
        sampling=pb.SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
    )


async def token_ids(stub: worker_pb2_grpc.WorkerServiceStub, req: pb.GenerateRequest) -> list[int]:
    return [t async for r in stub.Generate(req, timeout=60) for t in r.token_ids]


async def status_of(stub: worker_pb2_grpc.WorkerServiceStub, req: pb.GenerateRequest) -> str:
    try:
        await token_ids(stub, req)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def assert_healthy(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    beat = await stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)
    assert beat.state == pb.WORKER_STATE_READY
    (model,) = beat.models
    assert (model.state, model.error) == (pb.MODEL_STATE_READY, "")


async def test_degenerate_sampling_is_served_like_greedy(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    greedy = await token_ids(stub, request("greedy"))
    assert len(greedy) == 8
    # 1e-45 is the report's value (a float32 denormal on the wire): it once made NaN.
    for index, temperature in enumerate((1e-45, 1e-38, 1e-30, 9e-6)):
        got = await token_ids(stub, request(f"tiny-{index}", temperature=temperature, seed=index))
        assert got == greedy, temperature
    top_p = await token_ids(stub, request("top-p", temperature=1.0, top_p=1e-9))
    assert top_p == greedy
    # Extremes that sample: valid tokens, full length.
    for index, sampling in enumerate(
        (
            {"temperature": 3.0e38},
            {"temperature": 1e-5, "top_k": 2**31 - 1},
            {"temperature": 1.0, "seed": -(2**63)},
        )
    ):
        got = await token_ids(stub, request(f"extreme-{index}", **sampling))
        assert len(got) == 8
    await assert_healthy(stub)


async def test_faulty_requests_are_invalid_argument_and_the_worker_stays_healthy(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    faulty = [
        request("nan-temperature", temperature=NAN),
        request("inf-temperature", temperature=INF),
        request("nan-top-p", top_p=NAN),
        request("over-long", max_tokens=1_000_000),  # prompt + max_tokens past the context
    ]
    good = [request(f"good-{i}", temperature=1e-45 if i % 2 else 0.0) for i in range(6)]
    # Interleaved and concurrent, as the report's client did it.
    mixed = [r for pair in zip(good, faulty + faulty[:2], strict=True) for r in pair]
    statuses = await asyncio.gather(*(status_of(stub, r) for r in mixed))
    assert statuses[0::2] == ["OK"] * len(good)
    assert statuses[1::2] == ["INVALID_ARGUMENT"] * len(good)
    await assert_healthy(stub)
    assert len(await token_ids(stub, request("after"))) == 8


@pytest.mark.parametrize("temperature", [NAN, INF, -INF])
async def test_non_finite_temperature_is_refused_at_the_edge(
    stub: worker_pb2_grpc.WorkerServiceStub, temperature: float
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await token_ids(stub, request("non-finite", temperature=temperature))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature" in (caught.value.details() or "")
    await assert_healthy(stub)
