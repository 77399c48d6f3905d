"""Prefill/decode disaggregation over real gRPC: two worker servers with the reference
engine on the tiny model; the decode worker pulls the KV cache from the prefill worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import FakeEngine, serve_worker

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import InvalidArgumentError
from worker.engine.base import EngineClient
from worker.engine.transformers_engine import TransformersEngine
from worker.kvtransfer import KVAssembler, encode_frames
from worker.models import ModelManager
from worker.servicer import WorkerServicer

MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@dataclass
class Worker:
    address: str
    stub: worker_pb2_grpc.WorkerServiceStub


async def _start_worker(model_dir: Path, fake: bool = False) -> tuple[Worker, object, object]:
    async def factory(name: str, path: Path) -> EngineClient:
        if fake:
            return FakeEngine(name)
        return await TransformersEngine.load(path, name)

    manager = ModelManager(factory, engine_kind="transformers", capacity_bytes=1 << 30)
    async for _ in manager.load(MODEL, model_dir):
        pass
    servicer = WorkerServicer(manager, worker_id="w")

    running = await serve_worker(servicer)
    channel = grpc.aio.insecure_channel(running.address)
    return Worker(running.address, worker_pb2_grpc.WorkerServiceStub(channel)), running, channel


@pytest_asyncio.fixture
async def pair(tiny_model_dir: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    started = [await _start_worker(tiny_model_dir) for _ in range(2)]
    yield started[0][0], started[1][0]
    for _, running, channel in started:
        await channel.close()  # type: ignore[attr-defined]
        await running.stop(0)  # type: ignore[attr-defined]


def gen_request(request_id: str, max_tokens: int, **kind: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        model=MODEL,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0),
        **kind,  # type: ignore[arg-type]
    )


async def disaggregated(
    prefill: Worker, decode: Worker, request: pb.GenerateRequest
) -> list[pb.GenerateResponse]:
    first = await prefill.stub.Prefill(pb.PrefillRequest(request=request))
    steps = [first.first]
    if first.first.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
        assert first.kv_cache_handle == ""
        return steps
    assert first.kv_cache_handle
    async for r in decode.stub.Decode(
        pb.DecodeRequest(
            request=request,
            kv_cache_handle=first.kv_cache_handle,
            prefill_worker=first.prefill_worker or prefill.address,
            first_token_id=first.first.token_ids[0],
        )
    ):
        steps.append(r.step)
    return steps


CASES = [
    {"prompt": "Once upon a time"},
    {"chat": pb.ChatPrompt(messages=[pb.PromptMessage(role="user", content="Tell me a story")])},
    {"prompt": "Good software is tested, documented and easy to change. " * 8},
]


@pytest.mark.parametrize("kind", CASES, ids=["prompt", "chat", "long-prompt"])
async def test_disaggregated_greedy_equals_single_worker(
    pair: tuple[Worker, Worker], kind: dict[str, object]
) -> None:
    prefill, decode = pair
    request = gen_request("pd-1", 24, **kind)
    single = [r async for r in prefill.stub.Generate(request)]
    split = await disaggregated(prefill, decode, request)
    single_ids = [t for r in single for t in r.token_ids]
    split_ids = [t for r in split for t in r.token_ids]
    assert len(set(single_ids)) > 1  # a real generation, not one token repeated
    assert split_ids == single_ids
    assert "".join(r.text for r in split) == "".join(r.text for r in single)
    assert split[-1].finish_reason == single[-1].finish_reason
    assert split[-1].completion_tokens == single[-1].completion_tokens
    assert split[-1].prompt_tokens == single[-1].prompt_tokens


async def test_stop_string_and_one_token_generations(pair: tuple[Worker, Worker]) -> None:
    prefill, decode = pair
    # max_tokens=1: prefill alone finishes, no KV cache is parked.
    one = await disaggregated(prefill, decode, gen_request("pd-2", 1, prompt="Hello"))
    assert len(one) == 1 and one[0].finish_reason == pb.FINISH_REASON_LENGTH
    # A stop string taken from the single-worker output cuts both the same way.
    request = gen_request("pd-3", 30, prompt="Once upon a time")
    full = "".join([r.text async for r in prefill.stub.Generate(request)])
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    request.sampling.stop.append(stop)
    single = [r async for r in prefill.stub.Generate(request)]
    split = await disaggregated(prefill, decode, request)
    assert "".join(r.text for r in split) == "".join(r.text for r in single)
    assert split[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_kv_cache_is_fetched_once(pair: tuple[Worker, Worker]) -> None:
    prefill, decode = pair
    request = gen_request("pd-4", 8, prompt="Once upon a time")
    first = await prefill.stub.Prefill(pb.PrefillRequest(request=request))
    decode_request = pb.DecodeRequest(
        request=request,
        kv_cache_handle=first.kv_cache_handle,
        prefill_worker=prefill.address,
        first_token_id=first.first.token_ids[0],
    )
    steps = [r async for r in decode.stub.Decode(decode_request)]
    assert steps[-1].step.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in decode.stub.Decode(decode_request)]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "not on this worker" in (info.value.details() or "")


async def test_decode_rejects_bad_requests(pair: tuple[Worker, Worker]) -> None:
    _, decode = pair
    request = gen_request("pd-5", 8, prompt="Once upon a time")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in decode.stub.Decode(pb.DecodeRequest(request=request))]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [
            r
            async for r in decode.stub.Decode(
                pb.DecodeRequest(request=request, kv_cache_handle="h", prefill_worker="127.0.0.1:1")
            )
        ]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_engine_without_disaggregation_is_failed_precondition(
    tiny_model_dir: Path,
) -> None:
    worker, running, channel = await _start_worker(tiny_model_dir, fake=True)
    try:
        request = gen_request("pd-6", 4, prompt="hi")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await worker.stub.Prefill(pb.PrefillRequest(request=request))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await channel.close()  # type: ignore[attr-defined]
        await running.stop(0)  # type: ignore[attr-defined]


def test_frames_round_trip_and_stay_small() -> None:
    gen = torch.Generator().manual_seed(0)
    layers = [
        (torch.randn(1, 2, 300, 32, generator=gen), torch.randn(1, 2, 300, 32, generator=gen))
        for _ in range(3)
    ]
    frames = list(encode_frames(layers, max_frame_bytes=16 * 1024))
    assert len(frames) > 3
    assert all(len(f.data) < 17 * 1024 for f in frames)
    assembler = KVAssembler()
    for frame in frames:
        assembler.add(frame)
    rebuilt = assembler.finish()
    for (k, v), (k2, v2) in zip(layers, rebuilt, strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    missing = KVAssembler()
    for frame in frames[:-1]:
        missing.add(frame)
    with pytest.raises(InvalidArgumentError):
        missing.finish()
    with pytest.raises(InvalidArgumentError):
        KVAssembler().add(type(frames[0])(0, 3, 0, b"garbage"))
