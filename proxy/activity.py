"""Activity on the agents: the requests of each model running on each agent through the
proxy, and when each (agent, model) pair was last used. Domain only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Activity:
    """Requests of each model running on each agent through the proxy, and when each
    (agent, model) pair was last used (by such a request, or -- as heartbeats report --
    by one Envoy sent the worker directly): the idle-TTL clock and the eviction order."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], int] = {}
        self._last_used: dict[tuple[str, str], float] = {}

    @contextmanager
    def running(self, address: str, model: str) -> Iterator[None]:
        """Count a request of ``model`` running on ``address`` while it runs."""
        key = (address, model)
        self._running[key] = self._running.get(key, 0) + 1
        self._last_used[key] = time.monotonic()
        try:
            yield
        finally:
            self._running[key] -= 1
            self._last_used[key] = time.monotonic()

    def note(self, address: str, model: str) -> None:
        """``address`` served ``model`` just now (the idle clock starts again)."""
        self._last_used[(address, model)] = time.monotonic()

    def busy(self, address: str, model: str) -> int:
        """Requests of ``model`` the proxy has running on ``address``."""
        return self._running.get((address, model), 0)

    def last_used(self, address: str, model: str, default: float = 0.0) -> float:
        return self._last_used.get((address, model), default)

    def last_used_or(self, address: str, model: str, now: float) -> float:
        """When the pair was last used; a pair seen for the first time counts from
        ``now``."""
        return self._last_used.setdefault((address, model), now)

    def forget(self, address: str, model: str) -> None:
        self._last_used.pop((address, model), None)
