"""One Envoy's ADS stream, as protocol state (no I/O): what it subscribed to, what it was
sent and what it ACKed, per resource type (state of the world; see :mod:`proxy.xds_server`
for the rules this keeps: a version per content, ACK/NACK by nonce, stale nonces ignored,
a route only to a cluster and endpoints Envoy ACKed, a cluster withdrawn only once no
ACKed route names it)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from proxy.xds_resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    SERVED_TYPES,
    Resources,
    XdsSettings,
    build_route_configuration,
    resource_digests,
    response_version,
)

logger = logging.getLogger(__name__)


@dataclass
class _TypeState:
    """One resource type on one stream."""

    subscribed: bool = False
    names: frozenset[str] | None = None  # None: wildcard
    must_respond: bool = False
    version: str = ""  # of the last response sent
    nonce: str = ""  # of the last response sent
    sent_digests: dict[str, str] = field(default_factory=dict)  # its resources' by name
    refs: frozenset[str] = frozenset()  # clusters it names (RDS)
    acked_digests: dict[str, str] = field(default_factory=dict)  # of the last ACKed one
    acked_refs: frozenset[str] = frozenset()
    nacked_versions: set[str] = field(default_factory=set)


class XdsStream:
    """The protocol state of one Envoy's ADS stream (no I/O)."""

    def __init__(self, peer: str, settings: XdsSettings) -> None:
        self.peer = peer
        self.node = ""
        self._settings = settings
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0
        # The last cluster and endpoints sent by name (kept while a route still names it).
        self._clusters_sent: dict[str, Message] = {}
        self._assignments_sent: dict[str, Message] = {}
        self._unknown_types: set[str] = set()

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Record an ACK, NACK or (re)subscription."""
        if request.node.id:
            self.node = request.node.id
        type_url = request.type_url
        if type_url not in SERVED_TYPES:
            if type_url not in self._unknown_types:
                self._unknown_types.add(type_url)
                logger.warning("xds: type not served", extra={"type": type_url, "peer": self.peer})
            return
        state = self._types.setdefault(type_url, _TypeState())
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                return  # stale: a newer response is on its way, and its ACK says it all
            if request.HasField("error_detail"):
                if state.version not in state.nacked_versions:
                    state.nacked_versions.add(state.version)
                    logger.error(
                        "xds: envoy rejected a response",
                        extra={
                            "type": type_url,
                            "version": state.version,
                            "peer": self.peer,
                            "node": self.node,
                            "error": request.error_detail.message,
                        },
                    )
            else:
                state.acked_digests = state.sent_digests
                state.acked_refs = state.refs
        names = _names(type_url, request.resource_names)
        if not state.subscribed or names != state.names:
            state.must_respond = True
        state.subscribed = True
        state.names = names

    def responses(self, resources: Resources) -> list[discovery_pb2.DiscoveryResponse]:
        """What to send now, clusters first, then endpoints, then routes."""
        out = []
        for type_url in SERVED_TYPES:
            state = self._types.get(type_url)
            if state is None or not state.subscribed:
                continue
            chosen, refs = self._resources(type_url, state, resources)
            digests = resource_digests(chosen)
            version = response_version(digests)
            if version == state.version and not state.must_respond:
                continue
            self._nonce += 1
            state.nonce = str(self._nonce)
            state.version = version
            state.sent_digests = digests
            state.refs = refs
            state.must_respond = False
            if type_url == CLUSTER_TYPE:
                changed = any(
                    name in self._clusters_sent and self._clusters_sent[name] != cluster
                    for name, cluster in chosen.items()
                )
                endpoints = self._types.get(ENDPOINT_TYPE)
                if changed and endpoints is not None and endpoints.subscribed:
                    # A changed cluster warms again: its endpoints follow at once.
                    endpoints.must_respond = True
                self._clusters_sent = dict(chosen)
            elif type_url == ENDPOINT_TYPE:
                self._assignments_sent = dict(chosen)
            response = discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=state.nonce
            )
            for name in sorted(chosen):
                packed = any_pb2.Any()
                packed.Pack(chosen[name])
                response.resources.append(packed)
            out.append(response)
        return out

    def unsettled(self, resources: Resources) -> list[str]:
        """The types Envoy subscribed to on this stream whose ACKed state is not what
        it would be sent for ``resources``: empty when it routes as they say. Clusters
        and routes must match exactly (a withdrawal takes rounds: the route first, its
        cluster once that is ACKed); endpoints only for the clusters its ACKed routes
        name (Envoy does not ACK assignments of a cluster it no longer has, and those
        route nothing)."""
        lagging = []
        routes = self._types.get(ROUTE_TYPE)
        routed = routes.acked_refs if routes is not None else frozenset()
        for type_url, state in self._types.items():
            if not state.subscribed:
                continue
            digests = resource_digests(self._resources(type_url, state, resources)[0])
            if type_url == ENDPOINT_TYPE:
                settled = all(
                    state.acked_digests.get(name) == digest
                    for name, digest in digests.items()
                    if name in routed
                )
            else:
                settled = digests == state.acked_digests
            if state.must_respond or not settled:
                lagging.append(type_url.rpartition(".")[2])
        return lagging

    def _acked(self, type_url: str) -> Collection[str]:
        """The names of the resources of ``type_url`` Envoy last ACKed."""
        state = self._types.get(type_url)
        return state.acked_digests.keys() if state is not None else ()

    def _routed(self) -> frozenset[str]:
        """Clusters a route sent (ACKed or not yet) may still name."""
        routes = self._types.get(ROUTE_TYPE)
        if routes is None:
            return frozenset()
        return routes.refs | routes.acked_refs

    def _resources(
        self, type_url: str, state: _TypeState, resources: Resources
    ) -> tuple[dict[str, Message], frozenset[str]]:
        if type_url == CLUSTER_TYPE:
            chosen = dict(resources.clusters)
            for name in self._routed() - chosen.keys():
                if name in self._clusters_sent:  # withdrawn only once no route names it
                    chosen[name] = self._clusters_sent[name]
            return _filtered(chosen, state.names), frozenset()
        if type_url == ENDPOINT_TYPE:
            assignments = dict(resources.assignments)
            for name in self._routed() - assignments.keys():
                # A cluster kept for a route on its way out keeps its endpoints.
                if name in self._assignments_sent:
                    assignments[name] = self._assignments_sent[name]
            return _filtered(assignments, state.names), frozenset()
        # Routes: only to clusters Envoy ACKed, with endpoints it ACKed.
        ready = [
            name
            for name in resources.routes
            if name in self._acked(CLUSTER_TYPE) and name in self._acked(ENDPOINT_TYPE)
        ]
        order = {name: i for i, name in enumerate(resources.routes)}
        ready.sort(key=order.__getitem__)
        config = build_route_configuration(
            (resources.routes[name] for name in ready),
            self._settings.base_routes,
            self._settings.base_host,
            resources.budget_routes,
        )
        return _filtered({ROUTE_CONFIG_NAME: config}, state.names), frozenset(ready)


def _names(type_url: str, names: Sequence[str]) -> frozenset[str] | None:
    """The requested names; None for a wildcard (CDS with no names, or ``*``)."""
    if type_url == CLUSTER_TYPE and (not names or "*" in names):
        return None
    return frozenset(names)


def _filtered(resources: dict[str, Message], names: frozenset[str] | None) -> dict[str, Message]:
    if names is None:
        return resources
    return {name: r for name, r in resources.items() if name in names}
