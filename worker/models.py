"""The models a worker holds: loading, serving, draining and unloading them.

Domain only (no protobuf). The servicer asks :class:`ModelManager` for an engine with
:meth:`ModelManager.acquire`, which counts the request so that an unload can drain it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import (
    FailedPreconditionError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from runtime.gcheap import freeze_long_lived, thaw_long_lived
from worker.adapters import AdapterStore, Target
from worker.admission import Admission
from worker.engine.base import EngineClient, EngineStats
from worker.load_phases import LoadTimeline
from worker.storage_client import DownloadProgress

logger = logging.getLogger(__name__)

EngineFactory = Callable[[str, Path], Awaitable[EngineClient]]
"""Builds a ready engine serving model ``name`` from the HF-layout directory ``path``."""

EnsureModel = Callable[[str, str], AsyncIterator["DownloadProgress"]]
"""Makes (model, version) local, streaming progress; the last report has local_dir."""


class ModelLifecycle(enum.StrEnum):
    """Where a model is on this worker."""

    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    # Its engine sleeps (vLLM's sleep mode on a GPU): the accelerator memory is free, the
    # weights wait in host RAM, and the next load of the model wakes it in seconds.
    ASLEEP = "asleep"


@dataclass(frozen=True)
class LoadProgress:
    """One step of a load, for progress streams."""

    model: str
    state: ModelLifecycle
    progress: float
    message: str


@dataclass(frozen=True)
class ModelStatus:
    """What a heartbeat says of one model."""

    model: str
    state: ModelLifecycle
    engine: str
    stats: EngineStats
    size_bytes: int
    error: str = ""
    loaded_at: float = 0.0  # unix time it became READY (0: not yet)
    # Seconds of its last load by phase (worker/load_phases.py); empty until it has one.
    load_phases: dict[str, float] = field(default_factory=dict)
    # The LoRA adapters loaded on its engine now.
    adapters: tuple[str, ...] = ()


@dataclass
class _Slot:
    name: str
    state: ModelLifecycle
    engine: EngineClient | None = None
    engine_kind: str = ""
    size_bytes: int = 0
    error: str = ""
    loaded_at: float = 0.0
    load_phases: dict[str, float] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    asleep_since: float = 0.0  # monotonic time it fell asleep (ASLEEP only)

    def __post_init__(self) -> None:
        self.idle.set()


def _holds_memory(slot: _Slot) -> bool:
    """Whether ``slot`` counts against the worker's capacity: an engine is up and awake."""
    return slot.engine is not None and slot.state is not ModelLifecycle.ASLEEP


def _weights_size(path: Path) -> int:
    """Bytes of the weight files, the figure the worker charges against its capacity."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(
        f.stat().st_size for f in path.glob("*.bin")
    )


class ModelManager:
    """Holds the engines of one worker, keyed by model id."""

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        engine_kind: str,
        capacity_bytes: int,
        admission: Admission | None = None,
        adapters: AdapterStore | None = None,
        max_asleep: int = 2,
    ) -> None:
        """``admission``: the fair queues ahead of the engines (default limits when
        None); :meth:`serve` takes its turns. ``adapters``: the LoRA adapters the models
        serve (worker.adapters; none fetchable when None). ``max_asleep``: how many
        models an unload may keep asleep at once (engines that can sleep only)."""
        self._engine_factory = engine_factory
        self._engine_kind = engine_kind
        self.capacity_bytes = capacity_bytes
        self.admission = admission if admission is not None else Admission()
        self.adapters = adapters if adapters is not None else AdapterStore()
        self._slots: dict[str, _Slot] = {}
        self._lock = asyncio.Lock()
        # Models kept asleep at most (their weights wait in host RAM).
        self.max_asleep = max_asleep

    @property
    def used_bytes(self) -> int:
        return sum(s.size_bytes for s in self._slots.values() if _holds_memory(s))

    def budget_for(self, name: str) -> int:
        """Bytes model ``name`` may use: the capacity less every other model loaded or
        loading."""
        others = sum(
            s.size_bytes
            for n, s in self._slots.items()
            if n != name and (_holds_memory(s) or s.state is ModelLifecycle.LOADING)
        )
        return self.capacity_bytes - others

    async def load(
        self, name: str, path: Path, timeline: LoadTimeline | None = None
    ) -> AsyncIterator[LoadProgress]:
        """Load model ``name`` from ``path``, yielding progress until READY.

        A failed load leaves the worker serving its other models; the model is listed
        as FAILED with the reason until it is loaded again. ``timeline``: the load's
        phases so far (the fetch, when :meth:`load_from_store` made the files local).
        """
        timeline = timeline or LoadTimeline(name)
        if not name:
            raise InvalidArgumentError("model: must not be empty")
        # Filesystem checks go to a thread: a slow disk must not stall other streams.
        if not await asyncio.to_thread(path.is_dir):
            raise NotFoundError(f"local_path: {path} is not a directory on this worker")
        size = await asyncio.to_thread(_weights_size, path)
        async with self._lock:
            current = self._slots.get(name)
            if current is not None and current.state is ModelLifecycle.READY:
                # Idempotent: a second LoadModel (a retrying or racing control plane)
                # finds the model serving and says so.
                yield LoadProgress(name, ModelLifecycle.READY, 1.0, "already loaded")
                return
            if current is not None and current.state is ModelLifecycle.LOADING:
                raise FailedPreconditionError(f"model {name} is already {current.state.value}")
            waking = current is not None and current.state is ModelLifecycle.ASLEEP
            if current is not None and waking:
                self._check_room(name, current.size_bytes)
                current.state, slot = ModelLifecycle.LOADING, current
            else:
                self._check_room(name, size)
                slot = _Slot(name=name, state=ModelLifecycle.LOADING, size_bytes=size)
                self._slots[name] = slot
        if waking:
            async for progress in self._wake(slot, timeline):
                yield progress
            return
        yield LoadProgress(name, ModelLifecycle.LOADING, 0.0, f"loading {path}")
        started = time.monotonic()
        try:
            engine = await self._engine_factory(name, path)
        except HeliosError as exc:
            slot.state, slot.error = ModelLifecycle.FAILED, exc.message
            logger.warning("model load failed", extra={"model": name, "error": exc.message})
            timeline.add("engine_start", time.monotonic() - started)
            timeline.finish("failed")
            raise
        except Exception as exc:
            slot.state, slot.error = ModelLifecycle.FAILED, f"{type(exc).__name__}: {exc}"
            logger.exception("model load failed", extra={"model": name})
            timeline.add("engine_start", time.monotonic() - started)
            timeline.finish("failed")
            raise FailedPreconditionError(f"loading model {name} failed: {slot.error}") from exc
        timeline.add_engine(time.monotonic() - started, engine.load_phases)
        slot.engine, slot.engine_kind = engine, self._engine_kind
        if engine.memory_bytes is not None:
            slot.size_bytes = max(slot.size_bytes, engine.memory_bytes)
        slot.state, slot.loaded_at = ModelLifecycle.READY, time.time()
        slot.load_phases = dict(timeline.phases)
        freeze_long_lived()  # the model's objects live until it is unloaded
        seconds = timeline.total_seconds
        logger.info("model ready", extra={"model": name, "load_seconds": round(seconds, 3)})
        timeline.finish("ready")
        yield LoadProgress(
            name, ModelLifecycle.READY, 1.0, f"ready in {seconds:.2f}s ({timeline.describe()})"
        )

    def _check_room(self, name: str, size: int) -> None:
        free = self.capacity_bytes - self.used_bytes
        if size > free:
            raise ResourceExhaustedError(
                f"model {name} needs {size} bytes of weights; {free} of"
                f" {self.capacity_bytes} bytes are free on this worker"
            )

    async def _wake(self, slot: _Slot, timeline: LoadTimeline) -> AsyncIterator[LoadProgress]:
        """Wake ``slot``'s sleeping engine (LOADING until it is READY again); an engine
        that cannot wake is shut down and the model is FAILED, to be loaded afresh."""
        yield LoadProgress(slot.name, ModelLifecycle.LOADING, 0.0, "waking the engine")
        assert slot.engine is not None
        try:
            with timeline.phase("wake"):
                await slot.engine.wake_up()
        except Exception as exc:
            logger.exception("model wake failed", extra={"model": slot.name})
            await self._drop(slot)
            raise FailedPreconditionError(f"waking model {slot.name} failed: {exc}") from exc
        slot.state, slot.loaded_at = ModelLifecycle.READY, time.time()
        slot.load_phases = dict(timeline.phases)
        logger.info("model woke", extra={"model": slot.name, "phases": timeline.phases})
        timeline.finish("ready")
        yield LoadProgress(slot.name, ModelLifecycle.READY, 1.0, f"awake in {timeline.describe()}")

    async def _put_to_sleep(self, slot: _Slot) -> bool:
        """Put ``slot``'s engine to sleep if it can sleep; False when it cannot (the
        caller frees it). Keeps at most ``max_asleep`` models asleep: the longest
        asleep is freed."""
        if slot.engine is None or not slot.engine.supports_sleep or self.max_asleep < 1:
            return False
        try:
            await slot.engine.sleep()
        except Exception:
            logger.exception("model sleep failed: freeing it", extra={"model": slot.name})
            return False
        slot.state, slot.asleep_since = ModelLifecycle.ASLEEP, time.monotonic()
        logger.info("model asleep", extra={"model": slot.name})
        asleep = sorted(
            (s for s in self._slots.values() if s.state is ModelLifecycle.ASLEEP),
            key=lambda s: s.asleep_since,
        )
        for oldest in asleep[: max(0, len(asleep) - self.max_asleep)]:
            await self._drop(oldest)
        return True

    async def _drop(self, slot: _Slot) -> None:
        """Free ``slot``'s engine and forget the model."""
        thaw_long_lived()  # the model's reference cycles must be collectable
        if slot.engine is not None:
            await slot.engine.shutdown()
        self._slots.pop(slot.name, None)
        freeze_long_lived()

    async def load_from_store(
        self, name: str, version: str, ensure: EnsureModel
    ) -> AsyncIterator[LoadProgress]:
        """Make ``name@version`` local through the model store (storaged EnsureModel),
        reporting DOWNLOADING progress, then load it like a local directory."""
        if not name:
            raise InvalidArgumentError("model: must not be empty")
        current = self._slots.get(name)
        if current is not None and current.state is ModelLifecycle.READY:
            yield LoadProgress(name, ModelLifecycle.READY, 1.0, "already loaded")
            return
        if current is not None and current.state is not ModelLifecycle.FAILED:
            raise FailedPreconditionError(f"model {name} is already {current.state.value}")
        local_dir = ""
        timeline = LoadTimeline(name)
        yield LoadProgress(name, ModelLifecycle.DOWNLOADING, 0.0, f"fetching {name}")
        fetch_started = time.monotonic()
        async for step in ensure(name, version):
            if step.local_dir:
                local_dir = step.local_dir
            yield LoadProgress(
                name,
                ModelLifecycle.DOWNLOADING,
                step.fraction,
                f"{step.bytes_done} of {step.bytes_total} bytes",
            )
        timeline.add("fetch", time.monotonic() - fetch_started)
        if not local_dir:
            raise FailedPreconditionError(f"the model store never made {name} local")
        async for progress in self.load(name, Path(local_dir), timeline):
            yield progress

    async def unload(self, name: str, drain_timeout: float, keep_asleep: bool = False) -> int:
        """Stop taking requests for ``name``, let running ones finish for up to
        ``drain_timeout`` seconds, abort the rest, free the engine -- or, with
        ``keep_asleep`` and an engine that can sleep, put it to sleep (ASLEEP: its
        accelerator memory free, a load wakes it). Returns how many requests were
        aborted."""
        slot = self._slots.get(name)
        if slot is None:
            raise NotFoundError(f"model {name} is not loaded on this worker")
        if slot.state is ModelLifecycle.DRAINING:
            raise FailedPreconditionError(f"model {name} is already being unloaded")
        slot.state = ModelLifecycle.DRAINING
        aborted = 0
        try:
            await asyncio.wait_for(slot.idle.wait(), timeout=drain_timeout)
        except TimeoutError:
            if slot.engine is not None:
                for request_id in list(slot.running):
                    await slot.engine.abort(request_id)
                    aborted += 1
            await slot.idle.wait()
        if keep_asleep and await self._put_to_sleep(slot):
            return aborted
        await self._drop(slot)
        logger.info("model unloaded", extra={"model": name, "aborted": aborted})
        return aborted

    @asynccontextmanager
    async def acquire(self, name: str, request_id: str) -> AsyncIterator[EngineClient]:
        """The engine serving ``name``, counted as running ``request_id`` while held."""
        slot = self._slots.get(name)
        if slot is None or slot.state is ModelLifecycle.FAILED:
            raise NotFoundError(f"model {name} is not loaded on this worker")
        if slot.state is not ModelLifecycle.READY or slot.engine is None:
            raise FailedPreconditionError(f"model {name} is {slot.state.value}, not ready")
        slot.running.add(request_id)
        slot.idle.clear()
        try:
            yield slot.engine
        finally:
            slot.running.discard(request_id)
            if not slot.running:
                slot.idle.set()

    @asynccontextmanager
    async def serve(
        self,
        name: str,
        request_id: str,
        *,
        authorization: str | None,
        deadline_s: float | None,
    ) -> AsyncIterator[EngineClient]:
        """:meth:`acquire` for a whole generation, after its fair turn (:meth:`turn`)."""
        async with (
            self.turn(name, authorization=authorization, deadline_s=deadline_s),
            self.acquire(name, request_id) as engine,
        ):
            yield engine

    @asynccontextmanager
    async def turn(
        self, name: str, *, authorization: str | None, deadline_s: float | None
    ) -> AsyncIterator[None]:
        """A request's fair turn in the model's admission queue (worker/admission.py): at
        most the engine's ``max_running_requests`` hold one at once, the others wait there
        per client (``authorization``: the request's API key metadata) and never reach the
        engine if their client leaves or their deadline (``deadline_s`` from now) passes
        first. A model that is not READY here is refused at once, without queueing."""
        slot = self._slots.get(name)
        capacity = (
            slot.engine.max_running_requests
            if slot is not None and slot.engine is not None and slot.state is ModelLifecycle.READY
            else None
        )
        async with self.admission.admitted(name, capacity, authorization, deadline_s):
            if capacity is not None and self.lifecycle(name) is not ModelLifecycle.READY:
                raise UnavailableError(
                    f"model {name} left this worker while the request waited for its turn"
                )
            yield

    def engine(self, name: str) -> EngineClient:
        """The engine of ``name`` for calls that are not requests (KV export)."""
        slot = self._slots.get(name)
        if slot is None or slot.engine is None:
            raise NotFoundError(f"model {name} is not loaded on this worker")
        return slot.engine

    def statuses(self) -> list[ModelStatus]:
        result = []
        for slot in self._slots.values():
            stats = slot.engine.stats() if slot.engine else EngineStats(0, 0)
            result.append(
                ModelStatus(
                    model=slot.name,
                    state=slot.state,
                    engine=slot.engine_kind,
                    stats=stats,
                    size_bytes=slot.size_bytes,
                    error=slot.error,
                    loaded_at=slot.loaded_at,
                    load_phases=dict(slot.load_phases),
                    adapters=slot.engine.adapter_ids() if slot.engine else (),
                )
            )
        return result

    def target(self, model: str) -> Target:
        """Where a request for ``model`` runs here: the model itself, or the base of
        the LoRA adapter it names (worker.adapters)."""
        return self.adapters.target(model, lambda name: name in self._slots)

    def lifecycle(self, name: str) -> ModelLifecycle | None:
        """Where model ``name`` is on this worker; None when this worker does not have it."""
        slot = self._slots.get(name)
        return slot.state if slot is not None else None

    async def check_health(self) -> list[str]:
        """Names of READY models whose engine reports itself dead."""
        dead = []
        for slot in self._slots.values():
            if slot.engine is None or slot.state is not ModelLifecycle.READY:
                continue
            try:
                await slot.engine.check_health()
            except HeliosError:
                dead.append(slot.name)
        return dead

    async def shutdown(self) -> None:
        for name in list(self._slots):
            slot = self._slots.pop(name)
            if slot.engine is not None:
                await slot.engine.shutdown()
