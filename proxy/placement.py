"""Where a cold model goes: best-fit bin-packing on the agents' declared free memory.

Domain only. An agent's free memory is what its heartbeat declares (its GPU's figure or
its configured capacity less loaded weights) less what the proxy has already promised
to loads in flight. A model is never placed where it does not fit. Among the agents it
fits, one where the model sleeps (it wakes in seconds), then one whose storaged already
holds the files in a faster tier (RAM, then NVMe) goes before one that would download
them, whatever the leftover memory; the tightest fit decides between agents of the same
tier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy.fleet import CacheLevel, WorkerView

# Prefer agents whose storage already holds the files in a fast tier.
_TIER_RANK = {
    CacheLevel.ASLEEP: 0,
    CacheLevel.GPU: 0,
    CacheLevel.RAM: 1,
    CacheLevel.NVME: 2,
    CacheLevel.REMOTE: 3,
}


@dataclass(frozen=True)
class NoFit:
    """Why no agent can take a model: for the error the client gets."""

    need_bytes: int
    largest_free: int
    largest_total: int
    agents: int

    def reason(self, model: str) -> str:
        if self.agents == 0:
            return f"no worker is available to load model {model}"
        if self.need_bytes > self.largest_total:
            return (
                f"model {model} needs {self.need_bytes} bytes; the largest worker has"
                f" {self.largest_total} bytes in all"
            )
        return (
            f"no worker has room for model {model}: it needs {self.need_bytes} bytes and"
            f" the most free on any worker is {self.largest_free} bytes"
        )


def best_fit(
    agents: Sequence[WorkerView],
    model: str,
    need_bytes: int,
    *,
    exclude: Iterable[str] = (),
) -> WorkerView | NoFit:
    """The routable agent, not already holding ``model``, that the model fits best: a
    faster storage tier for the model's files first (each agent's own
    :meth:`WorkerView.cache_level`, from its heartbeat), then the least free memory left
    over, then the address (deterministic)."""
    skip = set(exclude)
    usable = [a for a in agents if a.routable and a.address not in skip and not a.holds(model)]
    fitting = [a for a in usable if need_bytes <= a.placeable_free]
    if not fitting:
        return NoFit(
            need_bytes=need_bytes,
            largest_free=max((a.placeable_free for a in usable), default=0),
            largest_total=max((a.memory_total for a in usable), default=0),
            agents=len(usable),
        )

    def key(a: WorkerView) -> tuple[int, int, str]:
        return (_TIER_RANK[a.cache_level(model)], a.placeable_free - need_bytes, a.address)

    return min(fitting, key=key)


def eviction_plan(
    agent: WorkerView,
    need_bytes: int,
    idle_models: Sequence[tuple[str, int, float]],
    order: Mapping[str, int] | None = None,
) -> list[str] | None:
    """Which idle models to unload from ``agent`` so that ``need_bytes`` fits; None when
    even evicting all of them is not enough. ``idle_models`` holds (model, bytes charged,
    last used) for evictable models. ``order`` (the registry's eviction candidates) ranks
    models first to evict first; a rank < 0 means never evict (pinned); models it does
    not name go after the ranked ones. Ties, and everything without ``order``: least
    recently used first."""
    free = agent.placeable_free
    if need_bytes <= free:
        return []
    if need_bytes > agent.memory_total:
        return None
    ranks = order or {}
    evictable = [m for m in idle_models if ranks.get(m[0], 0) >= 0]
    unranked = len(ranks) + 1
    plan: list[str] = []
    for model, size, _ in sorted(
        evictable, key=lambda m: (ranks.get(m[0], unranked) if ranks else 0, m[2])
    ):
        plan.append(model)
        free += size
        if need_bytes <= free:
            return plan
    return None
