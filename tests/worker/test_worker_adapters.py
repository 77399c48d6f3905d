"""LoRA adapters on a worker: a request names an adapter (``<base>:<adapter>``, or its id
when the heartbeat's adapter table knows it) and runs on the base's engine with the
adapter's files from the model store. Domain tests of worker.adapters, then the real
tiny model over gRPC (InferenceService and WorkerService.Generate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import inference_pb2 as ipb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as pb
from support.fakes import serve_worker_inference
from support.lora_adapters import make_lora_adapter

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from worker.adapters import AdapterSpec, AdapterStore, Target, split_adapter_model
from worker.models import ModelManager
from worker.server import transformers_engine_factory
from worker.storage_client import DownloadProgress

BASE = DEFAULT_MODEL_NAME


class FakeStore:
    """storaged's EnsureModel over local directories, counting fetches."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self.fetched: list[tuple[str, str]] = []

    async def fetch(self, model: str, version: str) -> AsyncIterator[DownloadProgress]:
        self.fetched.append((model, version))
        await asyncio.sleep(0.01)  # requests arriving meanwhile wait for this fetch
        if model not in self.dirs:
            raise NotFoundError(f"model {model} is not in the registry")
        yield DownloadProgress(0, 10)
        yield DownloadProgress(10, 10, local_dir=str(self.dirs[model]))


def test_a_request_runs_on_the_model_itself_or_on_its_adapters_base() -> None:
    store = AdapterStore()
    store.update([AdapterSpec("org/one", "org/base", "v1")])
    loaded = {"org/base", "plain"}.__contains__
    assert store.target("plain", loaded) == Target("plain")
    assert store.target("org/one", loaded) == Target(
        "org/base", AdapterSpec("org/one", "org/base", "v1")
    )
    assert store.target("org/base:org/one", loaded).adapter == AdapterSpec(
        "org/one", "org/base", "v1"
    )
    # Not in the table: the pair form alone says which base (the latest version).
    assert store.target("org/base:org/two", loaded) == Target(
        "org/base", AdapterSpec("org/two", "org/base")
    )
    with pytest.raises(InvalidArgumentError, match="adapter of org/base, not of org/other"):
        store.target("org/other:org/one", loaded)
    assert store.target("org/unknown", loaded) == Target("org/unknown")
    store.update([])
    assert store.target("org/one", loaded) == Target("org/one")
    assert split_adapter_model("org/base:org/one") == ("org/base", "org/one")
    assert split_adapter_model("org/base") is None
    assert split_adapter_model(":org/one") is None


async def test_an_adapters_files_are_fetched_once_for_all_waiting_requests(tmp_path: Path) -> None:
    fake = FakeStore({"org/one": tmp_path})
    store = AdapterStore(fake.fetch)
    spec = AdapterSpec("org/one", "org/base", "v1")
    refs = await asyncio.gather(*(store.ref(spec) for _ in range(5)))
    assert {r.path for r in refs if r is not None} == {tmp_path}
    assert await store.ref(spec) == refs[0]
    assert fake.fetched == [("org/one", "v1")]
    assert await store.ref(None) is None
    with pytest.raises(NotFoundError):
        await store.ref(AdapterSpec("org/gone", "org/base"))
    with pytest.raises(FailedPreconditionError, match="no storaged"):
        await AdapterStore().ref(spec)


@dataclass
class Worker:
    inference: inference_pb2_grpc.InferenceServiceStub
    control: worker_pb2_grpc.WorkerServiceStub
    store: FakeStore


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)
    root = tmp_path_factory.mktemp("loras")
    return {
        f"test/{name}": make_lora_adapter(base, root / name, seed=seed, base_name=BASE)
        for name, seed in (("one", 1), ("two", 2))
    }


@pytest_asyncio.fixture
async def worker(lora_dirs: dict[str, Path]) -> AsyncIterator[Worker]:
    store = FakeStore(lora_dirs)
    manager = ModelManager(
        transformers_engine_factory(max_concurrency=2),
        engine_kind="transformers",
        capacity_bytes=1 << 30,
        adapters=AdapterStore(store.fetch),
    )
    base_dir = next(iter(lora_dirs.values())).parent.parent / DEFAULT_MODEL_NAME
    async for _ in manager.load(BASE, base_dir):
        continue
    server = await serve_worker_inference(manager)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Worker(
                inference_pb2_grpc.InferenceServiceStub(channel),
                worker_pb2_grpc.WorkerServiceStub(channel),
                store,
            )
    finally:
        await server.stop(0)
        await manager.shutdown()


def completion(model: str) -> ipb.CreateCompletionRequest:
    params = ipb.CompletionParams(model=model, max_tokens=10, temperature=0.0, ignore_eos=True)
    params.prompt.string_value = "Once upon a time"
    return ipb.CreateCompletionRequest(params=params)


async def complete(worker: Worker, model: str) -> str:
    response = await worker.inference.CreateCompletion(completion(model))
    return response.choices[0].text


async def generate(worker: Worker, model: str) -> str:
    request = pb.GenerateRequest(request_id=f"g-{model}", model=model, prompt="Once upon a time")
    request.sampling.max_tokens = 10
    request.sampling.top_p = 1.0
    request.sampling.ignore_eos = True
    return "".join([r.text async for r in worker.control.Generate(request)])


async def test_adapters_change_the_output_by_id_or_pair_on_both_contracts(worker: Worker) -> None:
    table = pb.HeartbeatRequest()
    table.adapters.adapters.add(adapter="test/one", base=BASE, version="v1")
    await worker.control.Heartbeat(table)

    base = await complete(worker, BASE)
    one = await complete(worker, "test/one")
    two = await complete(worker, f"{BASE}:test/two")  # the pair form needs no table entry
    assert len({base, one, two}) == 3
    assert await complete(worker, f"{BASE}:test/one") == one
    # The proxy's relay (WorkerService.Generate) runs the same adapter the same way.
    assert await generate(worker, f"{BASE}:test/one") == one
    assert await generate(worker, BASE) == base
    assert sorted(worker.store.fetched) == [("test/one", "v1"), ("test/two", "")]

    beat = await worker.control.Heartbeat(pb.HeartbeatRequest())
    (model,) = beat.models
    assert (model.model, list(model.adapters)) == (BASE, ["test/one", "test/two"])
    # Adapter requests count as the base's (the control plane's idle clock): the four
    # InferenceService requests (the proxy counts what it relays itself).
    assert model.requests_total == 4


async def test_adapter_requests_the_worker_cannot_serve(worker: Worker) -> None:
    table = pb.HeartbeatRequest()
    table.adapters.adapters.add(adapter="test/one", base=BASE)
    await worker.control.Heartbeat(table)
    with pytest.raises(grpc.aio.AioRpcError) as wrong_base:
        await complete(worker, "org/other:test/one")
    assert wrong_base.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # An id no table names is a model this worker does not have (a stale route: retry).
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await complete(worker, "test/two")
    assert unknown.value.code() is grpc.StatusCode.UNAVAILABLE
    # An adapter the store does not hold.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await complete(worker, f"{BASE}:test/missing")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
