"""Fair admission to a worker's engines (domain; no protobuf).

Each model has an engine that runs at most ``capacity`` requests at once (the reference
engine's max_concurrency, vLLM's max_num_seqs: :attr:`EngineClient.max_running_requests`).
A request beyond that used to wait in the engine's own first-come-first-served queue, so
one client's flood put every other client behind all of it. Here it waits in this
module's queue instead, one lane per client, and the lanes take turns:

- A client is the API key its request came with (the ``authorization`` metadata Envoy
  passes on, ``Bearer <key>``); the key is hashed at once and only the hash is kept.
  Requests without a key form one class. (With keys off at the edge a client may name
  any key, so fairness then holds per claimed key; the total bound below still holds.)
- Round robin across lanes, one request per turn: a light client waits for at most one
  turn of each other client with requests queued, whatever their depth. Round robin
  rather than deficit round robin weighted by prompt tokens, because what a request holds
  is one of the engine's ``capacity`` slots for its whole life, and its cost there is
  dominated by decode steps nobody knows in advance (max_tokens is a bound, not a
  forecast); weighting by prompt tokens would also need the prompt tokenized before
  admission, on the path benchmarked against bare vLLM. Equal turns per request is the
  fair share of the slots.
- Bounded: at most ``per_client`` requests of one client and ``total`` of all clients
  wait per model; over either is :class:`ResourceExhaustedError` with a retry-after hint
  (HTTP 429 through Envoy). Refusing costs nothing and the worker stays healthy.
- A request whose client leaves (its task is cancelled) leaves its lane at once and never
  reaches the engine; one whose deadline passes while it waits is
  :class:`DeadlineExceededError`, with no engine work either.

A request that finds a free slot and nobody waiting is admitted at once: a comparison and
a counter, no hashing, no future (the uncontended path costs once per request, nothing per
token).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from runtime.errors import DeadlineExceededError, ResourceExhaustedError
from runtime.metrics import ChildrenByLabel
from worker.metrics import QUEUE_DEPTH, QUEUE_DROPPED, QUEUE_WAIT

ANONYMOUS = "anonymous"
"""The class of every request that came without an API key."""


def client_class(authorization: str | None) -> str:
    """The fairness class of a request with this ``authorization`` value: a short hash
    of its key (``Bearer`` and surrounding blanks ignored, so one key is one class),
    or :data:`ANONYMOUS`. The key itself is never kept."""
    if not authorization:
        return ANONYMOUS
    scheme, _, rest = authorization.strip().partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
    if not key:
        return ANONYMOUS
    return hashlib.blake2b(key.encode(errors="replace"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class QueueLimits:
    """How many requests may wait per model: ``per_client`` of one client, ``total`` of
    all; ``retry_after_s`` is the hint a refused client gets."""

    per_client: int = 64
    total: int = 256
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.per_client < 1 or self.total < 1:
            raise ValueError("queue limits must be >= 1")
        if self.retry_after_s <= 0:
            raise ValueError("retry_after_s must be > 0")


class ModelQueue:
    """One model's slots and lanes. ``running`` counts admitted requests (granted a slot
    and not yet left); ``queued`` those waiting. Invariant: while any request waits, every
    slot is taken (``running >= capacity``)."""

    def __init__(self, model: str, limits: QueueLimits, capacity: int) -> None:
        self.model = model
        self.limits = limits
        self.capacity = capacity
        self.running = 0
        self.queued = 0
        # Lanes in turn order: the first lane's head is admitted next, then that lane
        # goes to the back. A lane exists only while it holds a request.
        self._lanes: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._depth = QUEUE_DEPTH.labels(model)
        self._wait = QUEUE_WAIT.labels(model)
        self._dropped = ChildrenByLabel(QUEUE_DROPPED, model)

    async def enter(self, authorization: str | None, deadline_s: float | None) -> None:
        """Return once this request holds a slot (then :meth:`leave` must follow)."""
        if not self.queued and self.running < self.capacity:
            self.running += 1
            self._wait.observe(0.0)
            return
        await self._wait_turn(client_class(authorization), deadline_s)

    def leave(self) -> None:
        """An admitted request is done with its slot: the next in turn gets it."""
        self.running -= 1
        if self.queued:
            self._grant()

    def resize(self, capacity: int) -> None:
        """The engine's capacity changed (a reload): admit more at once if it grew."""
        self.capacity = capacity
        if self.queued:
            self._grant()

    def lane_depths(self) -> dict[str, int]:
        """Requests queued per client class, in turn order (for tests and debugging)."""
        return {client: len(lane) for client, lane in self._lanes.items()}

    def _refuse(self, message: str) -> ResourceExhaustedError:
        self._dropped("full").inc()
        return ResourceExhaustedError(message, retry_after_s=self.limits.retry_after_s)

    async def _wait_turn(self, client: str, deadline_s: float | None) -> None:
        if self.queued >= self.limits.total:
            raise self._refuse(
                f"model {self.model}: {self.queued} requests are queued on this worker, the"
                " most it queues; retry later"
            )
        lane = self._lanes.get(client)
        if lane is not None and len(lane) >= self.limits.per_client:
            raise self._refuse(
                f"model {self.model}: this client has {len(lane)} requests queued on this"
                " worker, the most one client may queue; retry later"
            )
        if deadline_s is not None and deadline_s <= 0:
            self._dropped("deadline").inc()
            raise DeadlineExceededError(f"model {self.model}: the deadline passed before a turn")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if lane is None:
            lane = self._lanes[client] = deque()
        lane.append(turn)
        self.queued += 1
        self._depth.set(self.queued)
        queued_at = time.monotonic()
        try:
            if deadline_s is None:
                await turn
            else:
                async with asyncio.timeout(deadline_s):
                    await turn
        except TimeoutError:
            self._withdraw(client, turn, "deadline")
            raise DeadlineExceededError(
                f"model {self.model}: the deadline passed after"
                f" {time.monotonic() - queued_at:.3f}s waiting for a turn on this worker"
            ) from None
        except asyncio.CancelledError:
            self._withdraw(client, turn, "cancelled")
            raise
        self._wait.observe(time.monotonic() - queued_at)

    def _withdraw(self, client: str, turn: asyncio.Future[None], reason: str) -> None:
        """A waiting request gave up (client gone, deadline): out of its lane now."""
        self._dropped(reason).inc()
        if turn.done() and not turn.cancelled():
            # Granted a slot in the instant before it gave up: pass the slot on.
            self.leave()
            return
        lane = self._lanes.get(client)
        if lane is None:
            return  # _grant already took it out (and counted it) while it was cancelled
        try:
            lane.remove(turn)
        except ValueError:
            return
        if not lane:
            del self._lanes[client]
        self.queued -= 1
        self._depth.set(self.queued)

    def _grant(self) -> None:
        """Admit waiting requests, one per lane in turn, while slots are free."""
        lanes = self._lanes
        while lanes and self.running < self.capacity:
            client, lane = next(iter(lanes.items()))
            turn = lane.popleft()
            if lane:
                lanes.move_to_end(client)
            else:
                del lanes[client]
            self.queued -= 1
            if turn.done():
                continue  # cancelled, its task not yet resumed: it finds itself gone
            turn.set_result(None)
            self.running += 1
        self._depth.set(self.queued)


class Admission:
    """The :class:`ModelQueue` of every model of one worker, shared by both contracts
    (InferenceService and the proxy's relayed WorkerService.Generate)."""

    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits if limits is not None else QueueLimits()
        self._queues: dict[str, ModelQueue] = {}

    @asynccontextmanager
    async def admitted(
        self,
        model: str,
        capacity: int | None,
        authorization: str | None,
        deadline_s: float | None,
    ) -> AsyncIterator[None]:
        """Hold one of ``model``'s ``capacity`` slots, after a fair turn. ``capacity``
        None (the engine states no limit) admits at once. ``model`` must be one this
        worker serves (its name becomes a metric label)."""
        if capacity is None:
            yield
            return
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = ModelQueue(model, self.limits, capacity)
        elif queue.capacity != capacity:
            queue.resize(capacity)
        await queue.enter(authorization, deadline_s)
        try:
            yield
        finally:
            queue.leave()

    def queue(self, model: str) -> ModelQueue | None:
        return self._queues.get(model)

    def queued(self, model: str) -> int:
        """Requests of ``model`` waiting for a turn (heartbeats add it to the engine's)."""
        queue = self._queues.get(model)
        return queue.queued if queue is not None else 0
