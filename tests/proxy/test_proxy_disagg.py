"""Disaggregated serving driven by the proxy, against real workers: in-process
WorkerService servers on real gRPC ports, each with the reference engine on the tiny
model and a role (both, prefill, decode); the proxy's cold path reaches them
through GrpcWorkerConnection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc
from prometheus_client import REGISTRY
from support.fakes import serve_worker

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from openai_compat.backend import Step
from openai_compat.params import Job, Sampling
from proxy.cold_path import RequestContext
from proxy.control import ControlPlane
from proxy.fleet import WorkerPool, WorkerRole
from proxy.worker_client import GrpcWorkerConnection
from runtime.errors import UnavailableError
from runtime.server import RunningServer
from worker.engine.base import EngineClient
from worker.engine.transformers_engine import TransformersEngine
from worker.models import ModelManager
from worker.servicer import WorkerServicer

MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / f"{MODEL}-disagg")


@dataclass
class Worker:
    role: str
    address: str
    server: RunningServer
    channel: grpc.aio.Channel
    manager: ModelManager

    @property
    def stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)

    async def heartbeat(self) -> pb.HeartbeatResponse:
        return await self.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)

    async def model_stats(self) -> pb.LoadedModel:
        beat = await self.heartbeat()
        return next(m for m in beat.models if m.model == MODEL)


async def start_worker(model_dir: Path, role: str) -> Worker:
    async def factory(name: str, path: Path) -> EngineClient:
        return await TransformersEngine.load(path, name)

    manager = ModelManager(factory, engine_kind="transformers", capacity_bytes=1 << 30)
    async for _ in manager.load(MODEL, model_dir):
        pass
    servicer = WorkerServicer(manager, worker_id=f"{role}-worker", role=role)

    server = await serve_worker(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    return Worker(role, server.address, server, channel, manager)


StartWorker = Callable[[str], Awaitable[Worker]]
MakePlane = Callable[[list[Worker]], Awaitable[ControlPlane]]


@pytest_asyncio.fixture
async def workers(tiny_model_dir: Path) -> AsyncIterator[StartWorker]:
    started: list[Worker] = []

    async def start(role: str) -> Worker:
        worker = await start_worker(tiny_model_dir, role)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.channel.close(None)
        await worker.server.stop(0)
        await worker.manager.shutdown()


@pytest_asyncio.fixture
async def planes() -> AsyncIterator[MakePlane]:
    made: list[ControlPlane] = []

    async def make(members: list[Worker]) -> ControlPlane:
        plane = ControlPlane.create(WorkerPool([w.address for w in members]), GrpcWorkerConnection)
        made.append(plane)
        await plane.refresh()
        return plane

    yield make
    for plane in made:
        await plane.stop()


def job(request_id: str, max_tokens: int = 24, *, ignore_eos: bool = True) -> Job:
    """A greedy chat job; ignore_eos (default) gives it a known length."""
    return Job(
        request_id=request_id,
        model=MODEL,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            seed=None,
            stop=(),
            ignore_eos=ignore_eos,
        ),
        created=int(time.time()),
        messages=(("user", "Tell me a story about a robot"),),
    )


async def collect(plane: ControlPlane, j: Job) -> list[Step]:
    return [step async for step in plane.serving.stream(j, RequestContext(deadline_s=60))]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------ roles on workers


async def test_roles_refuse_the_phases_they_do_not_serve(workers: StartWorker) -> None:
    prefill = await workers("prefill")
    decode = await workers("decode")
    request = pb.GenerateRequest(
        request_id="r1",
        model=MODEL,
        prompt="Once upon a time",
        sampling=pb.SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, ignore_eos=True),
    )
    assert (await prefill.heartbeat()).role == pb.WORKER_ROLE_PREFILL
    assert (await decode.heartbeat()).role == pb.WORKER_ROLE_DECODE
    for worker, refused in (
        (prefill, ["Generate", "Decode"]),
        (decode, ["Generate", "Prefill", "TransferKVCache"]),
    ):
        for rpc in refused:
            if rpc == "Generate":
                call = worker.stub.Generate(request)
            elif rpc == "Decode":
                call = worker.stub.Decode(
                    pb.DecodeRequest(
                        request=request,
                        kv_cache_handle="h",
                        prefill_worker=worker.address,
                        first_token_id=1,
                    )
                )
            elif rpc == "Prefill":
                call = worker.stub.Prefill(pb.PrefillRequest(request=request))
            else:
                call = worker.stub.TransferKVCache(
                    pb.TransferKVCacheRequest(kv_cache_handle="h", model=MODEL)
                )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if rpc == "Prefill":
                    await call
                else:
                    async for _ in call:
                        pass
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
            assert f"role {worker.role}" in (caught.value.details() or "")
    # What each role does serve still works: a real prefill, fetched by a real decode.
    first = await prefill.stub.Prefill(pb.PrefillRequest(request=request))
    steps = [
        r.step
        async for r in decode.stub.Decode(
            pb.DecodeRequest(
                request=request,
                kv_cache_handle=first.kv_cache_handle,
                prefill_worker=prefill.address,
                first_token_id=first.first.token_ids[0],
            )
        )
    ]
    assert steps[-1].completion_tokens == 4


# ------------------------------------------------------------------ routing (domain)


def _beat(pool: WorkerPool, address: str, role: WorkerRole, ready: bool = True) -> None:
    pool.record_heartbeat(
        address,
        worker_id=address,
        ready_models=["m"] if ready else [],
        known_models=["m"],
        healthy=True,
        role=role,
    )


def test_pool_pairs_only_when_both_pools_have_the_model_ready() -> None:
    pool = WorkerPool(["p1", "p2", "d1", "b1"])
    _beat(pool, "p1", WorkerRole.PREFILL)
    _beat(pool, "p2", WorkerRole.PREFILL)
    _beat(pool, "d1", WorkerRole.DECODE, ready=False)
    _beat(pool, "b1", WorkerRole.BOTH)
    assert pool.pick_disaggregated("m") is None  # no decode replica READY yet
    assert pool.pick("m") == "b1"  # whole generations only ever go to `both` workers
    _beat(pool, "d1", WorkerRole.DECODE)
    with pool.lease("p1"):
        assert pool.pick_disaggregated("m") == ("p2", "d1")  # least outstanding prefill
    assert pool.pick_disaggregated("m", exclude={"d1"}) is None
    with pytest.raises(UnavailableError):
        pool.pick("m", exclude={"b1"})  # the prefill workers are no stand-ins


def test_pool_never_picks_a_phase_worker_for_a_whole_generation() -> None:
    pool = WorkerPool(["p1", "d1"])
    _beat(pool, "p1", WorkerRole.PREFILL)
    _beat(pool, "d1", WorkerRole.DECODE)
    with pytest.raises(UnavailableError):
        pool.pick("m")
    assert pool.pick_disaggregated("m") == ("p1", "d1")


# ------------------------------------------------------------------ through the plane


async def test_disaggregated_output_equals_one_worker(
    workers: StartWorker, planes: MakePlane
) -> None:
    both = await workers("both")
    prefill = await workers("prefill")
    decode = await workers("decode")
    single = await planes([both])
    split = await planes([prefill, decode])
    served_before = sample("helios_proxy_disaggregated_requests_total", model=MODEL)

    expected = await collect(single, job("single"))
    got = await collect(split, job("split"))

    text = "".join(s.text for s in got)
    assert len(set(text)) > 3, text  # a real generation
    assert text == "".join(s.text for s in expected)
    assert got[-1].completion_tokens == expected[-1].completion_tokens == 24
    assert got[-1].prompt_tokens == expected[-1].prompt_tokens
    assert got[-1].finish_reason == expected[-1].finish_reason
    assert sample("helios_proxy_disaggregated_requests_total", model=MODEL) == served_before + 1
    # Prefill made one token; the decode worker made the other 23; `both` made none of them.
    assert (await prefill.model_stats()).generated_tokens_total == 1
    assert (await decode.model_stats()).generated_tokens_total == 23
    assert (await both.model_stats()).generated_tokens_total == 24  # the single run only

    # A one-token generation ends in Prefill: Decode is never called.
    one = await collect(split, job("one", max_tokens=1))
    assert [s.completion_tokens for s in one] == [1] and one[0].finish_reason == "length"
    assert (await decode.model_stats()).generated_tokens_total == 23


async def test_without_a_decode_pool_one_worker_serves(
    workers: StartWorker, planes: MakePlane
) -> None:
    both = await workers("both")
    prefill = await workers("prefill")
    plane = await planes([both, prefill])
    before = sample("helios_proxy_disaggregated_requests_total", model=MODEL)
    steps = await collect(plane, job("combined", max_tokens=6))
    assert steps[-1].completion_tokens == 6
    assert sample("helios_proxy_disaggregated_requests_total", model=MODEL) == before
    assert (await both.model_stats()).generated_tokens_total == 6
    assert (await prefill.model_stats()).generated_tokens_total == 0


async def test_decode_worker_down_before_its_first_token_prefills_again(
    workers: StartWorker,
    planes: MakePlane,
) -> None:
    both = await workers("both")
    prefill = await workers("prefill")
    doomed = await workers("decode")
    spare = await workers("decode")
    expected = "".join(s.text for s in await collect(await planes([both]), job("ref")))
    plane = await planes([prefill, doomed, spare])
    retries = sample("helios_proxy_decode_retries_total", model=MODEL)
    # The proxy still thinks `doomed` is READY (its last heartbeat said so); it is gone.
    await doomed.server.stop(0)
    steps = plane.serving.stream(job("retry"), RequestContext(deadline_s=60))
    async with aclosing(steps):
        # The pair is picked when the stream starts: a lease on `spare` makes `doomed`
        # the least outstanding decode worker for that pick only.
        with plane.pool.lease(spare.address):
            got = [await anext(steps)]  # Prefill's first step, before any Decode
        got += [step async for step in steps]
    assert "".join(s.text for s in got) == expected
    assert got[-1].completion_tokens == 24
    assert sample("helios_proxy_decode_retries_total", model=MODEL) == retries + 1
    assert not plane.pool.view(doomed.address).healthy
    # The first cache may still be parked (never fetched); the second one was taken.
    assert (await prefill.model_stats()).generated_tokens_total == 2
    assert (await spare.model_stats()).generated_tokens_total == 23


async def test_closing_the_stream_mid_decode_stops_the_decode_worker(
    workers: StartWorker,
    planes: MakePlane,
) -> None:
    prefill = await workers("prefill")
    decode = await workers("decode")
    plane = await planes([prefill, decode])
    steps = plane.serving.stream(
        job("cancel", max_tokens=1500, ignore_eos=True), RequestContext(deadline_s=60)
    )
    async with aclosing(steps):
        seen = 0
        async for _ in steps:
            seen += 1
            if seen == 4:
                break
    deadline = time.monotonic() + 10
    while True:
        stats = await decode.model_stats()
        if stats.running_requests == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert stats.running_requests == 0
    assert stats.aborted_requests_total == 1
    settled = stats.generated_tokens_total
    await asyncio.sleep(0.3)
    assert (await decode.model_stats()).generated_tokens_total == settled < 1499
    assert plane.pool.view(decode.address).outstanding == 0
    assert plane.pool.view(prefill.address).outstanding == 0
