"""Security: WorkerService.LoadModel opens a local_path only under the worker's model roots.

The reported hole (issue 16): LoadModel with any local_path loaded any directory and its
errors told whether a path existed. Now a path outside the roots (``--model-root``, and the
worker's own ``--model`` directories) is PERMISSION_DENIED before anything is opened, with
the same answer whether it exists or not; inside a root loading works as before.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from support.fakes import FakeEngine, serve_worker

from cli.processes import ServiceProcess
from runtime.paths import PathRoots
from worker.engine.base import EngineClient
from worker.models import ModelManager
from worker.servicer import WorkerServicer

Stub = worker_pb2_grpc.WorkerServiceStub


def write_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    return path


@dataclass
class Worker:
    stub: Stub
    root: Path
    outside: Path
    opened: list[Path]  # every directory the engine factory was asked to open


@pytest_asyncio.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    root = tmp_path / "models"
    write_model(root / "tiny")
    outside = write_model(tmp_path / "elsewhere")
    opened: list[Path] = []

    async def factory(name: str, path: Path) -> EngineClient:
        opened.append(path)
        return FakeEngine(name)

    manager = ModelManager(factory, engine_kind="fake", capacity_bytes=1 << 20)
    servicer = WorkerServicer(manager, worker_id="w-roots", local_roots=PathRoots([root]))
    running = await serve_worker(servicer)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Worker(Stub(channel), root, outside, opened)
    await running.stop(0)
    await manager.shutdown()


async def load(stub: Stub, local_path: str, model: str = "m") -> list[pb.LoadModelResponse]:
    request = pb.LoadModelRequest(model=model, local_path=local_path)
    return [r async for r in stub.LoadModel(request, timeout=10)]


async def denied(stub: Stub, local_path: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await load(stub, local_path)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return info.value.details() or ""


async def test_load_under_a_root_works(worker: Worker) -> None:
    steps = await load(worker.stub, str(worker.root / "tiny"))
    assert steps[-1].state == pb.MODEL_STATE_READY
    assert worker.opened == [(worker.root / "tiny").resolve()]


async def test_load_outside_the_roots_is_denied(worker: Worker, tmp_path: Path) -> None:
    link = worker.root / "escape"
    link.symlink_to(worker.outside, target_is_directory=True)
    for path in [
        "/etc",
        "/etc/ssh",
        str(Path.home()),
        str(worker.outside),  # a model directory, but not under a root
        f"{worker.root}/../elsewhere",  # ".." out of the root
        str(link),  # a symlink inside the root pointing out of it
        str(worker.root.parent),
    ]:
        await denied(worker.stub, path)
    assert worker.opened == []
    beat = await worker.stub.Heartbeat(pb.HeartbeatRequest())
    assert not beat.models


async def test_no_existence_oracle(worker: Worker, tmp_path: Path) -> None:
    """An outside path that exists and one that does not get the same answer."""
    exists = str(worker.outside)
    missing = str(tmp_path / "no-such-dir")
    one = await denied(worker.stub, exists)
    other = await denied(worker.stub, missing)
    assert one.replace(exists, "P") == other.replace(missing, "P")
    for word in ("exist", "not a directory", "no such", "not found"):
        assert word not in one.replace(exists, "P").lower()


async def test_bad_text_is_invalid_argument_and_long_paths_are_not_echoed(
    worker: Worker,
) -> None:
    for path in ["relative/dir", "/tmp/a\0b", "/" + "a" * 5000]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await load(worker.stub, path)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details() or "") < 400
    details = await denied(worker.stub, "/etc/" + "x" * 3000)
    assert len(details) < 400


async def test_a_worker_with_no_roots_loads_no_local_path(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")

    async def never(name: str, path: Path) -> EngineClient:
        raise AssertionError("no engine may be built")

    manager = ModelManager(never, engine_kind="fake", capacity_bytes=1 << 20)
    running = await serve_worker(WorkerServicer(manager, worker_id="w-none"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            details = await denied(Stub(channel), str(model))
            assert "--model-root" in details
    finally:
        await running.stop(0)


async def test_worker_process_roots_are_its_model_flags_and_model_root(tmp_path: Path) -> None:
    """``python -m worker.server``: --model directories and --model-root are the roots;
    HELIOS_WORKER_MODEL_ROOTS adds more; anything else is PERMISSION_DENIED."""
    from models.tinymodel import build_tiny_model

    served = build_tiny_model(tmp_path / "served")
    extra_root = tmp_path / "extra"
    env_root = tmp_path / "env"
    extra_root.mkdir()
    env_root.mkdir()
    outside = write_model(tmp_path / "outside")
    process = ServiceProcess(
        name="worker-roots",
        module="worker.server",
        args=["--worker-id", "w", "--model", f"tiny={served}", "--model-root", str(extra_root)],
        state_dir=tmp_path / "state",
    )
    await process.start({"HELIOS_WORKER_MODEL_ROOTS": str(env_root)})
    try:
        await process.wait_ready(120)
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = Stub(channel)
            # The --model directory itself: already loaded, and allowed.
            steps = await load(stub, str(served), model="tiny")
            assert steps[-1].state == pb.MODEL_STATE_READY
            await denied(stub, str(outside))
            await denied(stub, "/etc/ssh")
            # Inside a root, a missing directory is the ordinary NOT_FOUND.
            for root in (extra_root, env_root):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await load(stub, str(root / "missing"))
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await process.stop(5)


def test_model_root_flag_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker.server import build_parser

    monkeypatch.setenv("HELIOS_WORKER_MODEL_ROOTS", os.pathsep.join(["/a", "/b"]))
    args = build_parser().parse_args(["--model-root", str(tmp_path)])
    assert args.model_root == [Path("/a"), Path("/b"), tmp_path]
    monkeypatch.delenv("HELIOS_WORKER_MODEL_ROOTS")
    assert build_parser().parse_args([]).model_root == []
