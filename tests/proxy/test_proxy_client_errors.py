"""Client errors are the client's (issue 16, item 3): a request's own fault reaches the
client with its status, is never retried elsewhere and never counts against the worker's
health; only engine and transport failures do.

The report: with one request at `"temperature": 1e-45` every 0.5 s, the reference
engine's sampler made NaN, the proxy read the failure as the worker's and marked it
DEGRADED, and 99.4% of everyone else's requests failed with 503.

Domain tests of the classification and the circuit breaker, then the proxy's router over
real gRPC against real workers: the reference engine on the tiny model (the report's
requests), and scripted engines answering every status code.
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
from fakes import FakeEngine, serve_worker
from prometheus_client import REGISTRY

from cli.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from openai_compat.params import Job, Sampling
from proxy.routing import AgentState, CircuitBreaker, CircuitState, WorkerPool
from proxy.service import CompletionRouter
from proxy.worker_client import GrpcWorkerConnection
from proxy.worker_errors import WORKER_FAILURE_CODES, RelayedError, relay_error
from runtime.errors import (
    DeadlineExceededError,
    HeliosError,
    InvalidArgumentError,
    UnavailableError,
)
from runtime.server import RunningServer
from worker.engine.base import EngineClient, GenerationChunk, GenerationRequest
from worker.engine.transformers_engine import TransformersEngine
from worker.models import ModelManager
from worker.servicer import WorkerServicer

Code = grpc.StatusCode

# The request's own outcomes: relayed unchanged, never retried, never counted.
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
# The worker's failures: counted against it, retried on another replica.
WORKER_CODES = [Code.UNAVAILABLE, Code.INTERNAL, Code.UNKNOWN, Code.DATA_LOSS]

# ---------------------------------------------------------------------------- domain


def test_every_status_code_is_classified() -> None:
    assert set(CLIENT_CODES) | set(WORKER_CODES) | {Code.OK, Code.DEADLINE_EXCEEDED} == set(Code)
    assert set(WORKER_CODES) == WORKER_FAILURE_CODES


@pytest.mark.parametrize("code", CLIENT_CODES)
def test_the_requests_own_errors_keep_their_status(code: grpc.StatusCode) -> None:
    error = relay_error("w:1", code, "the detail")
    assert not isinstance(error, UnavailableError)
    assert (error.status_code, error.message) == (code, "the detail")


@pytest.mark.parametrize("code", WORKER_CODES)
def test_the_workers_failures_are_unavailable_and_name_it(code: grpc.StatusCode) -> None:
    error = relay_error("w:1", code, None)
    assert isinstance(error, UnavailableError)
    assert error.message == f"worker w:1 failed: {code.name}"


def test_deadline_exceeded_is_the_workers_only_before_the_callers_deadline() -> None:
    code = Code.DEADLINE_EXCEEDED
    # The caller set no deadline, or it is far off: the worker timed out on its own.
    assert isinstance(relay_error("w", code, "x", deadline_at=None), UnavailableError)
    assert isinstance(relay_error("w", code, "x", deadline_at=10.0, now=5.0), UnavailableError)
    # The caller's own deadline ran out: its budget, relayed as DEADLINE_EXCEEDED.
    for now in (9.99, 10.0, 11.0):
        error = relay_error("w", code, "x", deadline_at=10.0, now=now)
        assert isinstance(error, DeadlineExceededError)


def test_a_relayed_error_carries_its_status_to_the_interceptor() -> None:
    error = RelayedError(Code.OUT_OF_RANGE, "offset past the end")
    assert isinstance(error, HeliosError)
    assert error.status_code is Code.OUT_OF_RANGE
    assert HeliosError("x").status_code is Code.INTERNAL  # the class default is untouched


def test_a_neutral_outcome_counts_nothing_and_frees_a_half_open_probe() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after=5.0)
    breaker.record_failure(now=0.0)
    breaker.record_neutral()
    assert (breaker.failures, breaker.state(now=0.0)) == (1, CircuitState.CLOSED)
    breaker.record_failure(now=0.0)
    assert breaker.state(now=1.0) is CircuitState.OPEN
    # Half-open: one probe goes; while it runs nothing else does.
    assert breaker.allows(now=6.0)
    breaker.on_dispatch(now=6.0)
    assert not breaker.allows(now=6.0)
    # The probe was the client's bad request: it says nothing; the next request probes.
    breaker.record_neutral()
    assert breaker.allows(now=6.0)
    breaker.on_dispatch(now=6.0)
    breaker.record_success()
    assert breaker.state(now=6.0) is CircuitState.CLOSED


def test_a_neutral_request_outcome_leaves_the_agent_routable() -> None:
    pool = WorkerPool(["a"])
    pool.record_heartbeat("a", worker_id="a", ready_models=["m"], healthy=True)
    for _ in range(10):
        pool.record_request_neutral("a")
    agent = pool.view("a")
    assert agent.routable and agent.state is AgentState.READY
    assert agent.breaker.failures == 0
    pool.record_request_neutral("gone")  # an agent discovery dropped: ignored


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
async def routers() -> AsyncIterator[Callable[..., Awaitable[CompletionRouter]]]:
    made: list[CompletionRouter] = []

    async def make(addresses: list[str], **pool_args: float) -> CompletionRouter:
        router = CompletionRouter(
            WorkerPool(addresses, **pool_args),  # type: ignore[arg-type]
            GrpcWorkerConnection,
            retry_backoff_s=0.0,
        )
        made.append(router)
        await router.refresh()
        return router

    yield make
    for router in made:
        await router.stop()


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


async def outcome(router: CompletionRouter, j: Job, deadline_s: float = 60) -> str:
    """ "OK" with the text, or the status code name the client gets."""
    try:
        step = await router.complete(j, deadline_s)
    except HeliosError as error:
        return error.status_code.name
    assert step.finish_reason in ("stop", "length")
    return "OK"


def retries() -> float:
    return REGISTRY.get_sample_value("helios_proxy_retries_total", {"model": MODEL}) or 0.0


def assert_never_degraded(router: CompletionRouter) -> None:
    for agent in router.pool.agents():
        assert agent.healthy, agent.address
        assert agent.state is not AgentState.DEGRADED, agent.address
        assert agent.breaker.failures == 0, agent.address
        assert agent.breaker.state() is CircuitState.CLOSED, agent.address
        assert agent.routable, agent.address


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The path the worker tests use: the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


async def test_the_report_bad_requests_never_take_the_worker_out(
    workers: StartWorker,
    routers: Callable[..., Awaitable[CompletionRouter]],
    tiny_model_dir: Path,
) -> None:
    async def reference(name: str, path: Path) -> EngineClient:
        return await TransformersEngine.load(path, name)

    worker = await workers(reference, tiny_model_dir)
    router = await routers([worker.address])
    retried = retries()
    # The report's request (now served greedy) and requests the engine must refuse,
    # interleaved with good ones and sent concurrently, several rounds.
    bad = [
        ("tiny-temperature", {"temperature": 1e-45}, "OK"),
        ("nan-temperature", {"temperature": float("nan")}, "INVALID_ARGUMENT"),
        ("inf-temperature", {"temperature": float("inf")}, "INVALID_ARGUMENT"),
        ("over-long", {"max_tokens": 1_000_000}, "INVALID_ARGUMENT"),
        ("nan-top-p", {"temperature": 1.0, "top_p": float("nan")}, "INVALID_ARGUMENT"),
    ]
    greedy = await router.complete(job("greedy"), 60)
    for round_ in range(3):
        jobs: list[tuple[Job, str]] = []
        for index, (name, sampling, want) in enumerate(bad):
            jobs.append((job(f"good-{round_}-{index}", temperature=0.7, seed=index), "OK"))
            jobs.append((job(f"{name}-{round_}", **sampling), want))
        got = await asyncio.gather(*(outcome(router, j) for j, _ in jobs))
        assert got == [want for _, want in jobs]
        assert_never_degraded(router)
    # 1e-45 is greedy: the same text as temperature 0.
    tiny = await router.complete(job("tiny-again", temperature=1e-45), 60)
    assert tiny.text == greedy.text
    assert retries() == retried  # nothing was retried elsewhere
    await router.refresh()
    assert_never_degraded(router)  # and the worker's own heartbeat agrees


class _StatusError(HeliosError):
    """An engine error with any status (for codes with no domain class)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"scripted {code.name}")
        self.status_code = code


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


async def test_every_client_status_is_relayed_unchanged_never_retried_never_counted(
    scripted: tuple[list[ScriptedEngine], list[str]],
    routers: Callable[..., Awaitable[CompletionRouter]],
) -> None:
    engines, addresses = scripted
    router = await routers(addresses)
    retried = retries()
    for code in CLIENT_CODES:
        before = sum(e.calls for e in engines)
        for index in range(4):  # more than the breaker's threshold
            assert await outcome(router, job(f"{code.name}-{index}", f"status:{code.name}")) == (
                code.name
            )
            assert await outcome(router, job(f"good-{code.name}-{index}")) == "OK"
        assert sum(e.calls for e in engines) - before == 8  # each reached one worker once
        assert_never_degraded(router)
    assert retries() == retried


@pytest.mark.parametrize("code", WORKER_CODES)
async def test_worker_failures_count_and_are_retried_elsewhere(
    scripted: tuple[list[ScriptedEngine], list[str]],
    routers: Callable[..., Awaitable[CompletionRouter]],
    code: grpc.StatusCode,
) -> None:
    engines, addresses = scripted
    router = await routers(addresses)
    retried = retries()
    assert await outcome(router, job("broken", f"status:{code.name}")) == "UNAVAILABLE"
    assert [e.calls for e in engines] == [1, 1]  # tried on the other worker too
    assert retries() - retried >= 1
    for agent in router.pool.agents():
        assert agent.state is AgentState.DEGRADED and agent.breaker.failures == 1
    await router.refresh()  # the heartbeat answers: back in rotation
    assert await outcome(router, job("after")) == "OK"


async def test_deadlines_the_worker_or_the_client(
    scripted: tuple[list[ScriptedEngine], list[str]],
    routers: Callable[..., Awaitable[CompletionRouter]],
) -> None:
    _engines, addresses = scripted
    router = await routers(addresses[:1])
    # The client's own deadline runs out while the worker works: its budget, not the
    # worker's failure.
    got = await outcome(router, job("slow", "sleep"), deadline_s=0.3)
    assert got == "DEADLINE_EXCEEDED"
    assert_never_degraded(router)
    # The worker answers DEADLINE_EXCEEDED long before the client's deadline: its own
    # timeout (a dependency it waited for), counted like any failure of the worker.
    got = await outcome(router, job("worker-timeout", "status:DEADLINE_EXCEEDED"), 60)
    assert got == "UNAVAILABLE"
    (agent,) = router.pool.agents()
    assert agent.breaker.failures == 1


async def test_a_bad_request_as_the_half_open_probe_does_not_wedge_the_circuit(
    scripted: tuple[list[ScriptedEngine], list[str]],
    routers: Callable[..., Awaitable[CompletionRouter]],
) -> None:
    _engines, addresses = scripted
    router = await routers(addresses[:1], breaker_threshold=1, breaker_reset_s=0.1)
    (agent,) = router.pool.agents()
    assert await outcome(router, job("broken", "status:INTERNAL")) == "UNAVAILABLE"
    assert agent.breaker.state() is CircuitState.OPEN
    await router.refresh()
    await asyncio.sleep(0.15)
    assert agent.breaker.state() is CircuitState.HALF_OPEN
    # The probe is a client's bad request: it answers INVALID_ARGUMENT...
    assert await outcome(router, job("probe", "status:INVALID_ARGUMENT")) == "INVALID_ARGUMENT"
    # ...and the next request may still probe (before the fix: no replica, forever).
    assert agent.routable
    assert await outcome(router, job("good")) == "OK"
    assert agent.breaker.state() is CircuitState.CLOSED


async def test_invalid_argument_from_the_engine_is_the_clients(
    scripted: tuple[list[ScriptedEngine], list[str]],
    routers: Callable[..., Awaitable[CompletionRouter]],
) -> None:
    _engines, addresses = scripted
    router = await routers(addresses)
    with pytest.raises(InvalidArgumentError, match="scripted INVALID_ARGUMENT"):
        await router.complete(job("bad", "status:INVALID_ARGUMENT"), 60)
    assert_never_degraded(router)
