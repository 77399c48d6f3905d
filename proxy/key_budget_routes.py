"""Routes for API keys whose tokens-per-minute budget is spent.

Envoy counts a key's requests per minute itself (local_ratelimit), but not its tokens:
those only the workers see, and report in heartbeats (proxy.heartbeats charges
:class:`proxy.limits.ApiKeys`). While a key's budget is spent, the control plane puts a
route in front of the model routes that sends that key's InferenceService calls to the
proxy, like a cold request; the proxy's cold path refuses them with RESOURCE_EXHAUSTED
(HTTP 429) and a Retry-After of when the budget is positive again. Once it is, the
route goes and the key's requests go straight to the workers again. The overshoot is
what a key can spend within about one heartbeat interval plus a push, and its requests
already running.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.route.v3 import route_components_pb2

AUTHORIZATION_HEADER = "authorization"
ROUTE_NAME_PREFIX = "helios-key-budget-"


def budget_routes(
    keys: Iterable[str],
    base_routes: Sequence[route_components_pb2.Route],
    inference_prefix: str,
    name_prefix: str = ROUTE_NAME_PREFIX,
) -> tuple[route_components_pb2.Route, ...]:
    """One route per key in ``keys``: a copy of the base route of ``inference_prefix``
    (the InferenceService's route to the proxy, with its per-filter config) that matches
    only the key's ``authorization: Bearer <key>`` header. None without that base route."""
    template = next((r for r in base_routes if r.match.prefix == inference_prefix), None)
    if template is None:
        return ()
    routes = []
    for index, key in enumerate(sorted(keys)):
        route = route_components_pb2.Route()
        route.CopyFrom(template)
        route.name = f"{name_prefix}{index}"  # never the key itself
        header = route.match.headers.add()
        header.name = AUTHORIZATION_HEADER
        # "Bearer <key>": the edge's api_key_auth admitted only known keys, and a key has
        # no white space, so the suffix " <key>" is the key and nothing else.
        header.string_match.suffix = f" {key}"
        routes.append(route)
    return tuple(routes)
