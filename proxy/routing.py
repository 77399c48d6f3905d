"""Which worker serves a request: the pool of workers as heartbeats describe them.

Domain only. The warm-path policy here is least-outstanding-requests among healthy
workers that report the model READY; richer policies (prefix affinity, cold starts,
bin-packing) belong to the proxy control-plane work and plug in at :meth:`WorkerPool.pick`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from runtime.errors import NotFoundError, UnavailableError

# A worker whose heartbeats failed this many times in a row takes no new requests
# until a heartbeat succeeds again.
UNHEALTHY_AFTER_FAILURES = 2


@dataclass
class WorkerView:
    """What the proxy knows of one worker."""

    address: str
    worker_id: str = ""
    ready_models: frozenset[str] = frozenset()
    known_models: frozenset[str] = frozenset()
    healthy: bool = False
    outstanding: int = 0
    consecutive_failures: int = 0
    last_heartbeat: float = 0.0
    model_first_seen: dict[str, float] = field(default_factory=dict)


class WorkerPool:
    """The workers of a static list (the embedded default discovery)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self._workers = {a: WorkerView(address=a) for a in addresses}
        if not self._workers:
            raise ValueError("a worker pool needs at least one worker address")

    @property
    def addresses(self) -> list[str]:
        return list(self._workers)

    def view(self, address: str) -> WorkerView:
        return self._workers[address]

    def record_heartbeat(
        self,
        address: str,
        *,
        worker_id: str,
        ready_models: Iterable[str],
        known_models: Iterable[str],
        healthy: bool,
        now: float | None = None,
    ) -> None:
        worker = self._workers[address]
        now = time.time() if now is None else now
        worker.worker_id = worker_id
        worker.ready_models = frozenset(ready_models)
        worker.known_models = frozenset(known_models)
        for model in worker.known_models:
            worker.model_first_seen.setdefault(model, now)
        worker.healthy = healthy
        worker.consecutive_failures = 0
        worker.last_heartbeat = now

    def record_failure(self, address: str) -> None:
        """A heartbeat or a request to ``address`` failed at the transport level."""
        worker = self._workers[address]
        worker.consecutive_failures += 1
        if worker.consecutive_failures >= UNHEALTHY_AFTER_FAILURES:
            worker.healthy = False

    def pick(self, model: str) -> str:
        """The address of the worker that should serve ``model`` now."""
        candidates = [w for w in self._workers.values() if w.healthy and model in w.ready_models]
        if not candidates:
            if any(model in w.known_models for w in self._workers.values()):
                raise UnavailableError(f"model {model} has no healthy ready replica right now")
            raise NotFoundError(f"The model `{model}` does not exist")
        return min(candidates, key=lambda w: (w.outstanding, w.address)).address

    @contextmanager
    def lease(self, address: str) -> Iterator[None]:
        """Count a request as outstanding on ``address`` while it runs."""
        worker = self._workers[address]
        worker.outstanding += 1
        try:
            yield
        finally:
            worker.outstanding -= 1

    def models(self) -> dict[str, tuple[int, float]]:
        """Every model any worker knows -> (ready replicas, first seen Unix time)."""
        result: dict[str, tuple[int, float]] = {}
        for worker in self._workers.values():
            for model in worker.known_models:
                ready, first = result.get(model, (0, float("inf")))
                is_ready = worker.healthy and model in worker.ready_models
                result[model] = (
                    ready + int(is_ready),
                    min(first, worker.model_first_seen.get(model, first)),
                )
        return result
