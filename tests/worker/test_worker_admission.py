"""The worker's fair admission queue (worker/admission.py), as a domain object: turns
across clients, bounds, cancellation and deadlines while queued, capacity. Orders and
counts only; nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from runtime.config import ConfigError
from runtime.errors import DeadlineExceededError, ResourceExhaustedError
from runtime.grpc_errors import RETRY_AFTER_METADATA, retry_after_metadata
from runtime.settings import from_namespace
from worker.admission import ANONYMOUS, Admission, QueueLimits, client_class
from worker.engine.vllm_engine import VllmConfig, _max_num_seqs
from worker.server import build_parser
from worker.settings import WorkerSettings


def key(name: str) -> str:
    return f"Bearer {name}"


class Engine:
    """Stands for an engine of ``capacity`` slots: records who was admitted, in order,
    and holds each admitted request until the test releases it."""

    def __init__(self, admission: Admission, model: str, capacity: int) -> None:
        self.admission = admission
        self.model = model
        self.capacity = capacity
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0
        self._release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def _request(self, name: str, client: str | None, deadline_s: float | None) -> None:
        release = self._release[name] = asyncio.Event()
        async with self.admission.admitted(self.model, self.capacity, client, deadline_s):
            self.started.append(name)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await release.wait()
            finally:
                self.running -= 1

    async def send(self, name: str, client: str | None, deadline_s: float | None = None) -> None:
        """Start request ``name`` and let it reach the engine or its lane."""
        self.tasks[name] = asyncio.create_task(self._request(name, client, deadline_s))
        await settle()

    async def finish(self, name: str) -> None:
        self._release[name].set()
        await self.tasks[name]
        await settle()

    def queued(self) -> int:
        return self.admission.queued(self.model)

    def dropped(self, reason: str) -> float:
        """helios_worker_queue_dropped_total of this model for ``reason``."""
        return metric("helios_worker_queue_dropped_total", model=self.model, reason=reason)


async def settle() -> None:
    """Let every ready task run until none is (a handful of loop turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def admission() -> Admission:
    return Admission(QueueLimits(per_client=50, total=200))


def test_client_class_hashes_the_key_and_never_keeps_it() -> None:
    secret = "sk-very-secret-key"
    cls = client_class(f"Bearer {secret}")
    assert secret not in cls and len(cls) == 16
    assert client_class(f"bearer  {secret} ") == cls  # one key, one class
    assert client_class("Bearer other") != cls
    assert client_class(None) == client_class("") == client_class("Bearer ") == ANONYMOUS


async def test_two_floods_and_a_light_client_take_turns(admission: Admission) -> None:
    engine = Engine(admission, "m-fair", capacity=1)
    await engine.send("hold", key("x"))
    for i in range(20):
        await engine.send(f"a{i}", key("a"))
    for i in range(20):
        await engine.send(f"b{i}", key("b"))
    for i in range(3):
        await engine.send(f"c{i}", None)  # anonymous: one class
    assert engine.queued() == 43
    await engine.finish("hold")
    order: list[str] = []
    while len(order) < 43:
        order.append(engine.started[-1])
        await engine.finish(engine.started[-1])
    # One request per client in turn, in the order the clients arrived.
    assert order[:9] == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    assert order[9:] == [f"{x}{i}" for i in range(3, 20) for x in "ab"]
    assert engine.queued() == 0
    assert metric("helios_worker_queue_depth", model="m-fair") == 0


async def test_a_late_light_client_goes_before_most_of_a_flood(admission: Admission) -> None:
    engine = Engine(admission, "m-late", capacity=2)
    for i in range(30):
        await engine.send(f"a{i}", key("a"))
    assert engine.started == ["a0", "a1"] and engine.queued() == 28
    for i in range(3):
        await engine.send(f"b{i}", key("b"))
    arrived = len(engine.started)
    while engine.queued():
        await engine.finish(engine.started[len(engine.started) - 2])
    after = engine.started[arrived:]
    # Each of B's requests waits for at most one of A's.
    assert [after.index(f"b{i}") for i in range(3)] == [1, 3, 5]
    assert engine.most_running == 2


async def test_each_client_and_the_whole_queue_are_bounded() -> None:
    admission = Admission(QueueLimits(per_client=3, total=5, retry_after_s=2.5))
    model = "m-bounds"
    engine = Engine(admission, model, capacity=1)
    refused_before = engine.dropped("full")
    await engine.send("hold", key("a"))
    for i in range(3):
        await engine.send(f"a{i}", key("a"))
    with pytest.raises(ResourceExhaustedError) as refused:
        async with admission.admitted(model, 1, key("a"), None):
            pytest.fail("admitted past the client's bound")
    assert "this client has 3 requests queued" in refused.value.message
    assert refused.value.retry_after_s == 2.5
    # whole seconds on the wire, rounded up
    assert retry_after_metadata(refused.value) == ((RETRY_AFTER_METADATA, "3"),)
    # Another client still gets in line, up to the total.
    await engine.send("b0", key("b"))
    await engine.send("c0", key("c"))
    with pytest.raises(ResourceExhaustedError, match="5 requests are queued"):
        async with admission.admitted(model, 1, key("d"), None):
            pytest.fail("admitted past the total bound")
    assert engine.queued() == 5
    assert engine.dropped("full") == (refused_before + 2)
    # Refusals cost nothing: the queue serves on as before.
    await engine.finish("hold")
    assert engine.started == ["hold", "a0"]
    for task in engine.tasks.values():
        task.cancel()
    await asyncio.gather(*engine.tasks.values(), return_exceptions=True)


async def test_a_request_cancelled_while_queued_leaves_at_once_and_never_starts(
    admission: Admission,
) -> None:
    model = "m-cancel"
    engine = Engine(admission, model, capacity=1)
    cancelled_before = engine.dropped("cancelled")
    await engine.send("hold", key("a"))
    for name in ("a1", "a2", "b1"):
        await engine.send(name, key(name[0]))
    assert engine.queued() == 3
    engine.tasks["a1"].cancel()
    engine.tasks["b1"].cancel()
    await settle()
    assert engine.queued() == 1  # gone from their lanes before any slot frees
    assert metric("helios_worker_queue_depth", model=model) == 1
    assert admission.queue(model) is not None
    assert admission.queue(model).lane_depths() == {client_class(key("a")): 1}  # type: ignore[union-attr]
    await engine.finish("hold")
    await engine.finish("a2")
    assert engine.started == ["hold", "a2"]
    assert engine.dropped("cancelled") == (cancelled_before + 2)
    for name in ("a1", "b1"):
        assert engine.tasks[name].cancelled()


async def test_a_request_granted_a_slot_as_it_is_cancelled_passes_the_slot_on(
    admission: Admission,
) -> None:
    engine = Engine(admission, "m-race", capacity=1)
    async with admission.admitted("m-race", 1, key("a"), None):
        await engine.send("b0", key("b"))
        await engine.send("c0", key("c"))
    # Leaving granted b0 its turn (no loop turn since): b0's client leaves before b0 resumes.
    engine.tasks["b0"].cancel()
    await settle()
    assert engine.tasks["b0"].cancelled()
    assert engine.started == ["c0"]
    assert engine.queued() == 0
    await engine.finish("c0")
    queue = admission.queue("m-race")
    assert queue is not None and queue.running == 0


async def test_a_deadline_passing_while_queued_is_deadline_exceeded_without_a_turn(
    admission: Admission,
) -> None:
    model = "m-deadline"
    engine = Engine(admission, model, capacity=1)
    before = engine.dropped("deadline")
    await engine.send("hold", key("a"))
    await engine.send("late", key("b"), deadline_s=0.01)  # the slot is held until released
    with pytest.raises(DeadlineExceededError, match="waiting for a turn"):
        await engine.tasks["late"]
    with pytest.raises(DeadlineExceededError, match="before a turn"):
        async with admission.admitted(model, 1, key("b"), 0.0):
            pytest.fail("admitted with no time left")
    assert engine.queued() == 0
    await engine.finish("hold")
    assert engine.started == ["hold"]
    assert engine.dropped("deadline") == before + 2


async def test_capacity_is_respected_and_a_grown_capacity_admits_more(
    admission: Admission,
) -> None:
    engine = Engine(admission, "m-capacity", capacity=2)
    for client in "abcde":
        for i in range(3):
            await engine.send(f"{client}{i}", key(client))
    assert engine.running == 2 and engine.queued() == 13
    wait_count: Callable[[], float] = lambda: metric(  # noqa: E731
        "helios_worker_queue_wait_seconds_count", model="m-capacity"
    )
    counted = wait_count()
    while engine.queued() > 9:
        await engine.finish(engine.started[len(engine.started) - 2])
        assert engine.running == 2
    assert wait_count() == counted + 4  # each admitted request's wait, once
    engine.capacity = 4  # the engine was reloaded with more slots
    await engine.send("f0", key("f"))
    assert engine.running == 4
    while engine.running:
        name = next(n for n in engine.started if not engine.tasks[n].done())
        await engine.finish(name)
        assert engine.running <= 4
    assert len(engine.started) == 16 and engine.most_running == 4


async def test_no_capacity_known_admits_at_once(admission: Admission) -> None:
    once = admission.admitted("m-unbounded", None, key("a"), None)
    twice = admission.admitted("m-unbounded", None, key("a"), None)
    async with once, twice:
        assert admission.queued("m-unbounded") == 0
    assert admission.queue("m-unbounded") is None


def test_vllm_states_the_sequences_it_batches_as_its_capacity() -> None:
    settled = SimpleNamespace(
        vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=48))
    )
    assert _max_num_seqs(settled, VllmConfig(max_num_seqs=8)) == 48  # what vLLM settled on
    assert _max_num_seqs(SimpleNamespace(), VllmConfig(max_num_seqs=8)) == 8
    assert _max_num_seqs(SimpleNamespace(), VllmConfig()) is None


def test_queue_limits_from_the_worker_flags() -> None:
    def limits(argv: list[str]) -> QueueLimits:
        return from_namespace(WorkerSettings, build_parser().parse_args(argv)).queue_limits

    assert limits([]) == QueueLimits()
    assert limits(["--max-queued-per-client", "3", "--max-queued", "9"]) == QueueLimits(3, 9)
    for flag in ("--max-queued", "--max-queued-per-client"):
        with pytest.raises(ConfigError) as raised:
            limits([flag, "0"])
        assert raised.value.field == flag.removeprefix("--").replace("-", "_")
