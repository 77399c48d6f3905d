"""Agent control plane with the real reference engine over real gRPC: load/unload
cycles free memory, corrupt models fail cleanly, heartbeats report memory and queues."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import serve_worker

from models.tinymodel import build_tiny_model
from runtime.paths import PathRoots
from worker.models import ModelManager
from worker.server import transformers_engine_factory
from worker.servicer import WorkerServicer


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~40 MB of float32 weights: large enough that a leaked copy per cycle shows in RSS.
    return build_tiny_model(
        tmp_path_factory.mktemp("lifecycle") / "m",
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1024,
        vocab_size=4096,
    )


@pytest_asyncio.fixture
async def stub(
    big_model_dir: Path, tmp_path: Path
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    manager = ModelManager(
        transformers_engine_factory(2), engine_kind="transformers", capacity_bytes=1 << 30
    )
    # LoadModel's local paths: the model directories these tests make (--model-root).
    roots = PathRoots([big_model_dir, tmp_path])
    servicer = WorkerServicer(manager, worker_id="w-life", local_roots=roots)

    running = await serve_worker(servicer)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)
    await running.stop(0)
    await manager.shutdown()


async def load(stub: worker_pb2_grpc.WorkerServiceStub, name: str, path: Path) -> list[int]:
    return [
        r.state async for r in stub.LoadModel(pb.LoadModelRequest(model=name, local_path=str(path)))
    ]


async def generate(stub: worker_pb2_grpc.WorkerServiceStub, model: str) -> str:
    request = pb.GenerateRequest(
        request_id="r",
        model=model,
        prompt="Once upon a time",
        sampling=pb.SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0),
    )
    return "".join([r.text async for r in stub.Generate(request)])


async def test_load_unload_cycles_free_memory(
    stub: worker_pb2_grpc.WorkerServiceStub, big_model_dir: Path
) -> None:
    weights = (big_model_dir / "model.safetensors").stat().st_size
    assert weights > 30e6
    # One warm-up cycle: first-use allocations (torch kernels, tokenizer caches) stay.
    assert await load(stub, "big", big_model_dir) == [pb.MODEL_STATE_LOADING, pb.MODEL_STATE_READY]
    await generate(stub, "big")
    await stub.UnloadModel(pb.UnloadModelRequest(model="big"))
    gc.collect()
    baseline = rss_bytes()
    for _ in range(4):
        await load(stub, "big", big_model_dir)
        assert await generate(stub, "big")
        await stub.UnloadModel(pb.UnloadModelRequest(model="big"))
    gc.collect()
    grown = rss_bytes() - baseline
    # Four leaked copies would be > 4x the weights; allow allocator slack of one copy.
    assert grown < 1.0 * weights, (grown, weights)
    beat = await stub.Heartbeat(pb.HeartbeatRequest())
    assert not beat.models and beat.state == pb.WORKER_STATE_IDLE


async def test_two_models_then_corrupt_one_fails_cleanly(
    stub: worker_pb2_grpc.WorkerServiceStub, big_model_dir: Path, tmp_path: Path
) -> None:
    small = build_tiny_model(tmp_path / "small")
    await load(stub, "a", small)
    await load(stub, "b", big_model_dir)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(small, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await load(stub, "c", corrupt)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot load model 'c'" in (info.value.details() or "")
    beat = await stub.Heartbeat(pb.HeartbeatRequest())
    states = {m.model: m for m in beat.models}
    assert states["a"].state == states["b"].state == pb.MODEL_STATE_READY
    assert states["c"].state == pb.MODEL_STATE_FAILED and states["c"].error
    assert beat.memory_source == "configured"
    used = sum(
        p.stat().st_size for p in [small / "model.safetensors", big_model_dir / "model.safetensors"]
    )
    assert beat.memory_total_bytes - beat.memory_free_bytes == used
    assert beat.queue_depth == 0
    # The worker keeps serving both models, and the failed one can be loaded again.
    assert await generate(stub, "a") and await generate(stub, "b")
    assert (await load(stub, "c", small))[-1] == pb.MODEL_STATE_READY


async def test_load_without_local_path_or_storaged(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in stub.LoadModel(pb.LoadModelRequest(model="x"))]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "storaged" in (info.value.details() or "")
