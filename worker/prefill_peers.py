"""A decode-role worker's prefill pools: the prefill-role workers it may run its
requests' prefills on, per model (domain: no protobuf).

The control plane lists them in every heartbeat (HeartbeatRequest.prefill_pools: the
workers with the model READY in a prefill pool, healthy and not draining, with their
load); :meth:`PrefillPeers.update` replaces what the worker knew. Between heartbeats
the worker keeps its own count of the prefills it has outstanding on each peer, and a
peer whose call failed (UNAVAILABLE) is passed over for ``failure_cooldown_s`` -- the
control plane's next heartbeats may still list it until its own heartbeat to the peer
fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager

from worker_api.disagg import PrefillPeer

DEFAULT_FAILURE_COOLDOWN_S = 5.0


class PrefillPeers:
    """The prefill pools this worker knows, its outstanding prefills on each peer and
    the peers that failed recently."""

    def __init__(
        self,
        *,
        failure_cooldown_s: float = DEFAULT_FAILURE_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failure_cooldown_s = failure_cooldown_s
        self._clock = clock
        self._pools: dict[str, tuple[PrefillPeer, ...]] = {}
        self._outstanding: dict[str, int] = {}
        self._failed_at: dict[str, float] = {}

    def update(self, pools: Mapping[str, Sequence[PrefillPeer]]) -> None:
        """The control plane's current pools (model -> its prefill workers); a model
        missing from ``pools`` has none now."""
        self._pools = {model: tuple(peers) for model, peers in pools.items() if peers}
        now = self._clock()
        self._failed_at = {a: t for a, t in self._failed_at.items() if self._cooling(a, now)}

    def pool(self, model: str) -> tuple[PrefillPeer, ...]:
        """``model``'s prefill workers as last listed (empty: it has no prefill pool)."""
        return self._pools.get(model, ())

    def outstanding(self, address: str) -> int:
        """This worker's prefills running on ``address`` now."""
        return self._outstanding.get(address, 0)

    def _cooling(self, address: str, now: float) -> bool:
        failed_at = self._failed_at.get(address)
        return failed_at is not None and now - failed_at < self._failure_cooldown_s

    def pick(self, model: str, exclude: Set[str] = frozenset()) -> str | None:
        """The prefill worker of ``model`` to call next: the fewest of this worker's own
        prefills outstanding there, then the least load its heartbeat reported. Peers
        in ``exclude`` never; peers that failed recently only when every other one did
        too (a request that would otherwise fail gets their chance)."""
        peers = [p for p in self.pool(model) if p.address not in exclude]
        if not peers:
            return None
        now = self._clock()
        fresh = [p for p in peers if not self._cooling(p.address, now)]
        best = min(
            fresh or peers,
            key=lambda p: (
                self.outstanding(p.address),
                p.running + p.waiting,
                p.kv_cache_usage,
                p.address,
            ),
        )
        return best.address

    @contextmanager
    def lease(self, address: str) -> Iterator[None]:
        """Count a prefill as outstanding on ``address`` while it runs."""
        self._outstanding[address] = self._outstanding.get(address, 0) + 1
        try:
            yield
        finally:
            left = self._outstanding[address] - 1
            if left:
                self._outstanding[address] = left
            else:
                del self._outstanding[address]

    def failed(self, address: str) -> None:
        """A call to ``address`` failed because of the peer: pass it over for a while."""
        self._failed_at[address] = self._clock()

    def succeeded(self, address: str) -> None:
        """A call to ``address`` served: it is no longer passed over."""
        self._failed_at.pop(address, None)
