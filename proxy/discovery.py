"""Where the agents are: pluggable discovery.

A source lists worker addresses now; the proxy polls it and adds/removes agents. The
static list (``--worker``) is the embedded default; a Kubernetes EndpointSlice source
(``proxy.k8s``) implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class DiscoverySource(Protocol):
    """Lists the worker addresses (``host:port``) that exist now."""

    name: str

    async def addresses(self) -> list[str]: ...


class StaticDiscovery:
    """A fixed list of addresses, from flags or env."""

    name = "static"

    def __init__(self, addresses: Iterable[str]) -> None:
        self._addresses = list(dict.fromkeys(a for a in addresses if a))
        if not self._addresses:
            raise ValueError("static discovery needs at least one worker address")

    async def addresses(self) -> list[str]:
        return list(self._addresses)
