"""Where the agents are: pluggable discovery.

A source lists worker addresses now; the proxy polls it and adds/removes agents. The
static list (``--worker``) is the embedded default; :class:`KubernetesDiscovery` follows
the worker Services' EndpointSlices through ``proxy.k8s``'s watcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from runtime.errors import UnavailableError
from runtime.tasks import BackgroundTask

if TYPE_CHECKING:
    from proxy.k8s import MembershipChange, WorkerEndpoint

logger = logging.getLogger(__name__)


class DiscoverySource(Protocol):
    """Lists the worker addresses (``host:port``) that exist now."""

    name: str

    async def addresses(self) -> list[str]: ...


class MembershipSource(Protocol):
    """Worker membership changes as they happen (``proxy.k8s.EndpointSliceWatcher``)."""

    relists: int  # full lists so far; > 0 once the first list is in

    def changes(self) -> AsyncIterator[MembershipChange]: ...


class StaticDiscovery:
    """A fixed list of addresses, from flags or env."""

    name = "static"

    def __init__(self, addresses: Iterable[str]) -> None:
        self._addresses = list(dict.fromkeys(a for a in addresses if a))
        if not self._addresses:
            raise ValueError("static discovery needs at least one worker address")

    async def addresses(self) -> list[str]:
        return list(self._addresses)


class KubernetesDiscovery:
    """The ready workers of the worker Services' EndpointSlices (``proxy.k8s``).

    A background task consumes the watcher's membership changes into the current set,
    which :meth:`addresses` returns (the first call waits, at most ``sync_timeout_s``,
    for the initial list). It also remembers each model's pools — the Services its
    workers came from, which in deploy/worker-template are also the names of the
    Deployments that run them — so a pool scaled to zero can be scaled back up;
    ``pools`` adds pools known up front (``--k8s-pool MODEL=DEPLOYMENT``).
    """

    name = "kubernetes"

    def __init__(
        self,
        watcher: MembershipSource,
        *,
        pools: Mapping[str, Iterable[str]] | None = None,
        sync_timeout_s: float = 10.0,
        retry_s: float = 1.0,
    ) -> None:
        self._watcher = watcher
        self._members: dict[str, WorkerEndpoint] = {}
        self._pools: dict[str, set[str]] = {m: set(d) for m, d in (pools or {}).items()}
        self._follower = BackgroundTask(self._follow, "kubernetes discovery")
        self.sync_timeout_s = sync_timeout_s
        self.retry_s = retry_s

    def start(self) -> None:
        self._follower.start()

    async def close(self) -> None:
        await self._follower.stop()

    async def _follow(self) -> None:
        while True:
            try:
                async for change in self._watcher.changes():
                    self._apply(change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher retries API errors itself
                logger.warning(
                    "kubernetes discovery stopped; restarting",
                    extra={"error": repr(exc)},
                )
            await asyncio.sleep(self.retry_s)

    def _apply(self, change: MembershipChange) -> None:
        endpoint = change.endpoint
        if change.kind == "added":
            self._members[endpoint.address] = endpoint
            if endpoint.service:
                self._pools.setdefault(endpoint.model, set()).add(endpoint.service)
        elif self._members.get(endpoint.address) == endpoint:
            del self._members[endpoint.address]
        logger.info(
            "worker endpoint " + change.kind,
            extra={"worker": endpoint.address, "model": endpoint.model, "pod": endpoint.pod},
        )

    async def addresses(self) -> list[str]:
        self.start()
        if self._watcher.relists == 0:
            # Not listed yet: wait for the first list (its changes are applied in the
            # same step of the follower task as the list itself).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.sync_timeout_s
            while self._watcher.relists == 0:
                if loop.time() >= deadline:
                    raise UnavailableError("kubernetes discovery has not listed the workers yet")
                await asyncio.sleep(0.05)
        return list(self._members)

    @property
    def endpoints(self) -> dict[str, WorkerEndpoint]:
        """The ready workers now, by address."""
        return dict(self._members)

    def pools(self, model: str) -> set[str]:
        """The Deployments that run ``model``'s workers (configured or seen)."""
        return set(self._pools.get(model, ()))
