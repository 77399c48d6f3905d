"""Client errors are the client's (issue 16, item 3): a request's own fault reaches the
client with its status and never counts against the worker's health; only engine and
transport failures do (they take the worker out of routing until its next heartbeat).

The report: with one request at `"temperature": 1e-45` every 0.5 s, the reference
engine's sampler made NaN, the proxy read the failure as the worker's and marked it
DEGRADED, and 99.4% of everyone else's requests failed with 503.

Domain tests of the classification, then the proxy's cold path (it relays the requests
that reach the proxy) over real gRPC against real workers: the reference engine on the
tiny model (the report's requests), and scripted engines answering every status code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.fakes import FakeEngine, serve_worker

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from openai_compat.backend import Step
from openai_compat.params import Job, Sampling
from proxy.cold_path import RequestContext
from proxy.control import ControlPlane
from proxy.fleet import AgentState, WorkerPool
from proxy.worker_client import GrpcWorkerConnection
from proxy.worker_errors import WORKER_FAILURE_CODES, relay_error
from runtime.errors import (
    DeadlineExceededError,
    ErrorCode,
    HeliosError,
    InvalidArgumentError,
    RelayedError,
    UnavailableError,
)
from runtime.grpc_errors import error_code, grpc_status
from runtime.server import RunningServer
from worker.engine.base import EngineClient, GenerationChunk, GenerationRequest
from worker.engine.transformers_engine import TransformersEngine
from worker.models import ModelManager
from worker.servicer import WorkerServicer

Code = grpc.StatusCode

# The request's own outcomes: relayed unchanged, never counted.
CLIENT_CODES = [
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.RESOURCE_EXHAUSTED,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
    Code.ABORTED,
    Code.CANCELLED,
    Code.UNIMPLEMENTED,
]
# The worker's failures: counted against it (out of routing until a heartbeat answers).
WORKER_CODES = [Code.UNAVAILABLE, Code.INTERNAL, Code.UNKNOWN, Code.DATA_LOSS]

# ---------------------------------------------------------------------------- domain


def test_every_status_code_is_classified() -> None:
    assert set(CLIENT_CODES) | set(WORKER_CODES) | {Code.OK, Code.DEADLINE_EXCEEDED} == set(Code)
    assert {error_code(code) for code in WORKER_CODES} == WORKER_FAILURE_CODES


@pytest.mark.parametrize("code", CLIENT_CODES)
def test_the_requests_own_errors_keep_their_status(code: grpc.StatusCode) -> None:
    error = relay_error("w:1", error_code(code), "the detail")
    assert not isinstance(error, UnavailableError)
    assert (grpc_status(error.code), error.message) == (code, "the detail")


@pytest.mark.parametrize("code", WORKER_CODES)
def test_the_workers_failures_are_unavailable_and_name_it(code: grpc.StatusCode) -> None:
    error = relay_error("w:1", error_code(code), None)
    assert isinstance(error, UnavailableError)
    assert error.message == f"worker w:1 failed: {code.name}"


def test_deadline_exceeded_is_the_workers_only_before_the_callers_deadline() -> None:
    code = ErrorCode.DEADLINE_EXCEEDED
    # The caller set no deadline, or it is far off: the worker timed out on its own.
    assert isinstance(relay_error("w", code, "x", deadline_at=None), UnavailableError)
    assert isinstance(relay_error("w", code, "x", deadline_at=10.0, now=5.0), UnavailableError)
    # The caller's own deadline ran out: its budget, relayed as DEADLINE_EXCEEDED.
    for now in (9.99, 10.0, 11.0):
        error = relay_error("w", code, "x", deadline_at=10.0, now=now)
        assert isinstance(error, DeadlineExceededError)


def test_a_relayed_error_carries_its_status_to_the_interceptor() -> None:
    error = RelayedError(ErrorCode.OUT_OF_RANGE, "offset past the end")
    assert isinstance(error, HeliosError)
    assert error.code is ErrorCode.OUT_OF_RANGE
    assert HeliosError("x").code is ErrorCode.INTERNAL  # the class default is untouched


# ----------------------------------------------------------------- over real gRPC

MODEL = "tiny"


@dataclass
class Worker:
    address: str
    server: RunningServer
    manager: ModelManager
    engine: EngineClient | None = None


StartWorker = Callable[[Callable[[str, Path], Awaitable[EngineClient]], Path], Awaitable[Worker]]


@pytest_asyncio.fixture
async def workers() -> AsyncIterator[StartWorker]:
    started: list[Worker] = []

    async def start(
        factory: Callable[[str, Path], Awaitable[EngineClient]], model_dir: Path
    ) -> Worker:
        manager = ModelManager(factory, engine_kind="test", capacity_bytes=1 << 34)
        async for _ in manager.load(MODEL, model_dir):
            pass
        server = await serve_worker(WorkerServicer(manager, worker_id=f"w{len(started)}"))
        worker = Worker(server.address, server, manager)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.server.stop(0)
        await worker.manager.shutdown()


@pytest_asyncio.fixture
async def planes() -> AsyncIterator[Callable[[list[str]], Awaitable[ControlPlane]]]:
    made: list[ControlPlane] = []

    async def make(addresses: list[str]) -> ControlPlane:
        plane = ControlPlane.create(WorkerPool(addresses), GrpcWorkerConnection)
        made.append(plane)
        await plane.refresh()
        return plane

    yield make
    for plane in made:
        await plane.stop()


Planes = Callable[[list[str]], Awaitable[ControlPlane]]


def job(request_id: str, prompt: str = "Once upon a time", **sampling: object) -> Job:
    values: dict[str, object] = {
        "max_tokens": 6,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": None,
        "stop": (),
        "ignore_eos": True,
    }
    values.update(sampling)
    return Job(
        request_id=request_id,
        model=MODEL,
        sampling=Sampling(**values),  # type: ignore[arg-type]
        created=int(time.time()),
        prompt=prompt,
    )


async def complete(plane: ControlPlane, j: Job, deadline_s: float = 60) -> Step:
    return await plane.serving.complete(j, RequestContext(deadline_s=deadline_s))


async def outcome(plane: ControlPlane, j: Job, deadline_s: float = 60) -> str:
    """ "OK" with the text, or the status code name the client gets."""
    try:
        step = await complete(plane, j, deadline_s)
    except HeliosError as error:
        return error.code.name
    assert step.finish_reason in ("stop", "length")
    return "OK"


def assert_never_degraded(plane: ControlPlane) -> None:
    for agent in plane.pool.agents():
        assert agent.healthy, agent.address
        assert agent.state is not AgentState.DEGRADED, agent.address
        assert agent.routable, agent.address


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The path the worker tests use: the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


async def test_the_report_bad_requests_never_take_the_worker_out(
    workers: StartWorker,
    planes: Planes,
    tiny_model_dir: Path,
) -> None:
    async def reference(name: str, path: Path) -> EngineClient:
        return await TransformersEngine.load(path, name)

    worker = await workers(reference, tiny_model_dir)
    plane = await planes([worker.address])
    # The report's request (now served greedy) and requests the engine must refuse,
    # interleaved with good ones and sent concurrently, several rounds.
    bad = [
        ("tiny-temperature", {"temperature": 1e-45}, "OK"),
        ("nan-temperature", {"temperature": float("nan")}, "INVALID_ARGUMENT"),
        ("inf-temperature", {"temperature": float("inf")}, "INVALID_ARGUMENT"),
        ("over-long", {"max_tokens": 1_000_000}, "INVALID_ARGUMENT"),
        ("nan-top-p", {"temperature": 1.0, "top_p": float("nan")}, "INVALID_ARGUMENT"),
    ]
    greedy = await complete(plane, job("greedy"))
    for round_ in range(3):
        jobs: list[tuple[Job, str]] = []
        for index, (name, sampling, want) in enumerate(bad):
            jobs.append((job(f"good-{round_}-{index}", temperature=0.7, seed=index), "OK"))
            jobs.append((job(f"{name}-{round_}", **sampling), want))
        got = await asyncio.gather(*(outcome(plane, j) for j, _ in jobs))
        assert got == [want for _, want in jobs]
        assert_never_degraded(plane)
    # 1e-45 is greedy: the same text as temperature 0.
    tiny = await complete(plane, job("tiny-again", temperature=1e-45))
    assert tiny.text == greedy.text
    await plane.refresh()
    assert_never_degraded(plane)  # and the worker's own heartbeat agrees


class _StatusError(HeliosError):
    """An engine error with any status (for codes with no domain class)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"scripted {code.name}", code=error_code(code))


class ScriptedEngine(FakeEngine):
    """Answers the prompt ``status:NAME`` with that gRPC status and ``sleep`` after 5 s;
    anything else as FakeEngine. Counts the requests that reached it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.calls += 1
        prompt = request.prompt or ""
        if prompt.startswith("status:"):
            raise _StatusError(grpc.StatusCode[prompt.removeprefix("status:")])
        if prompt == "sleep":
            await asyncio.sleep(5)
        async for chunk in super().generate(request):
            yield chunk


@pytest.fixture
def fake_model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    return path


@pytest_asyncio.fixture
async def scripted(
    workers: StartWorker, fake_model_dir: Path
) -> tuple[list[ScriptedEngine], list[str]]:
    engines: list[ScriptedEngine] = []

    async def factory(name: str, path: Path) -> EngineClient:
        engine = ScriptedEngine(name)
        engines.append(engine)
        return engine

    started = [await workers(factory, fake_model_dir) for _ in range(2)]
    return engines, [w.address for w in started]


async def test_every_client_status_is_relayed_unchanged_never_counted(
    scripted: tuple[list[ScriptedEngine], list[str]],
    planes: Planes,
) -> None:
    engines, addresses = scripted
    plane = await planes(addresses)
    for code in CLIENT_CODES:
        before = sum(e.calls for e in engines)
        for index in range(4):
            assert await outcome(plane, job(f"{code.name}-{index}", f"status:{code.name}")) == (
                code.name
            )
            assert await outcome(plane, job(f"good-{code.name}-{index}")) == "OK"
        assert sum(e.calls for e in engines) - before == 8  # each reached one worker once
        assert_never_degraded(plane)


@pytest.mark.parametrize("code", WORKER_CODES)
async def test_worker_failures_take_the_worker_out_until_its_next_heartbeat(
    scripted: tuple[list[ScriptedEngine], list[str]],
    planes: Planes,
    code: grpc.StatusCode,
) -> None:
    engines, addresses = scripted
    plane = await planes(addresses)
    assert await outcome(plane, job("broken", f"status:{code.name}")) == "UNAVAILABLE"
    # Not retried by the proxy (Envoy retries warm requests; this one reached one worker).
    assert sorted(e.calls for e in engines) == [0, 1]
    (failed,) = [a for a in plane.pool.agents() if a.state is AgentState.DEGRADED]
    assert not failed.routable
    assert await outcome(plane, job("elsewhere")) == "OK"  # the other worker serves
    await plane.refresh()  # the heartbeat answers: back in rotation
    assert failed.routable
    assert_never_degraded(plane)


async def test_deadlines_the_worker_or_the_client(
    scripted: tuple[list[ScriptedEngine], list[str]],
    planes: Planes,
) -> None:
    _engines, addresses = scripted
    plane = await planes(addresses[:1])
    # The client's own deadline runs out while the worker works: its budget, not the
    # worker's failure.
    got = await outcome(plane, job("slow", "sleep"), deadline_s=0.3)
    assert got == "DEADLINE_EXCEEDED"
    assert_never_degraded(plane)
    # The worker answers DEADLINE_EXCEEDED long before the client's deadline: its own
    # timeout (a dependency it waited for), counted like any failure of the worker.
    got = await outcome(plane, job("worker-timeout", "status:DEADLINE_EXCEEDED"), 60)
    assert got == "UNAVAILABLE"
    (agent,) = plane.pool.agents()
    assert agent.state is AgentState.DEGRADED and not agent.routable


async def test_invalid_argument_from_the_engine_is_the_clients(
    scripted: tuple[list[ScriptedEngine], list[str]],
    planes: Planes,
) -> None:
    _engines, addresses = scripted
    plane = await planes(addresses)
    with pytest.raises(InvalidArgumentError, match="scripted INVALID_ARGUMENT"):
        await complete(plane, job("bad", "status:INVALID_ARGUMENT"))
    assert_never_degraded(plane)
