"""Warm-path routing policies: which READY replica serves a request.

Pluggable and named in config (``--routing-policy``):

- ``least-outstanding`` (default): fewest requests in flight from this proxy.
- ``prefix-aware``: requests sharing a prompt prefix go to the same replica (rendezvous
  hashing of the prefix), so its prefix/KV cache is reused; falls back to the least
  loaded replica when the preferred one is much busier than the rest.
- ``session-affinity``: requests carrying the same session header value go to the same
  replica; requests without one are least-outstanding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.routing import WorkerView

# The prompt characters prefix-aware routing hashes.
DEFAULT_PREFIX_CHARS = 256
# Prefix-aware routing leaves its preferred replica when it has this many more
# requests in flight than the least loaded one.
DEFAULT_IMBALANCE = 8


@dataclass(frozen=True)
class RouteHint:
    """What a request offers routing besides its model."""

    prefix: str = ""
    session: str = ""


class RoutingPolicy(Protocol):
    """Chooses one of several READY candidates (never empty)."""

    name: str

    def choose(self, candidates: Sequence[WorkerView], hint: RouteHint) -> WorkerView: ...


def _least_outstanding(candidates: Sequence[WorkerView]) -> WorkerView:
    return min(candidates, key=lambda w: (w.outstanding, w.address))


def _rendezvous(candidates: Sequence[WorkerView], key: str) -> WorkerView:
    """Highest-random-weight hashing: stable when replicas come and go."""

    def weight(worker: WorkerView) -> bytes:
        return hashlib.blake2b(f"{key}\0{worker.address}".encode(), digest_size=8).digest()

    return max(candidates, key=weight)


class LeastOutstanding:
    """Fewest requests in flight; ties by address."""

    name = "least-outstanding"

    def choose(self, candidates: Sequence[WorkerView], hint: RouteHint) -> WorkerView:
        return _least_outstanding(candidates)


class PrefixAware:
    """Same prompt prefix -> same replica, unless it is overloaded."""

    name = "prefix-aware"

    def __init__(
        self, prefix_chars: int = DEFAULT_PREFIX_CHARS, imbalance: int = DEFAULT_IMBALANCE
    ) -> None:
        self.prefix_chars = prefix_chars
        self.imbalance = imbalance

    def choose(self, candidates: Sequence[WorkerView], hint: RouteHint) -> WorkerView:
        least = _least_outstanding(candidates)
        if not hint.prefix:
            return least
        preferred = _rendezvous(candidates, hint.prefix[: self.prefix_chars])
        if preferred.outstanding - least.outstanding >= self.imbalance:
            return least
        return preferred


class SessionAffinity:
    """Same session header value -> same replica."""

    name = "session-affinity"

    def choose(self, candidates: Sequence[WorkerView], hint: RouteHint) -> WorkerView:
        if not hint.session:
            return _least_outstanding(candidates)
        return _rendezvous(candidates, hint.session)


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    LeastOutstanding.name: LeastOutstanding,
    PrefixAware.name: PrefixAware,
    SessionAffinity.name: SessionAffinity,
}


def policy_by_name(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; one of {sorted(POLICIES)}") from None
