"""The names the edge (Envoy) and the control plane agree on: one definition each.

Envoy's Lua filter (edge/helios_edge.lua) gets the header names substituted when the
bootstrap is rendered (edge/lua.py); the proxy's xDS resources read them here. (The REST
marker, EDGE_HEADER, is openai_compat/protocol.py's: the services that read it own it.)
"""

from __future__ import annotations

__all__ = [
    "CLIENT_HEADER",
    "MODEL_HEADER",
    "PREFIX_HASH_HEADER",
    "REST_STREAM_PATHS",
    "ROUTE_CONFIG_NAME",
    "TRANSCODER_FILTER_NAME",
    "VIRTUAL_HOST_NAME",
]

# The model a request is for: set by the Lua filter from a REST body (a native gRPC
# client sends it as metadata); the control plane's per-model routes match on it.
MODEL_HEADER = "x-helios-model"
# A hash of the prompt's first bytes, set by the Lua filter: the control plane balances
# prefix-aware (ring-hash) models on it.
PREFIX_HASH_HEADER = "x-helios-prefix-hash"
# Reserved for the authenticated client's name: the Lua filter drops a client's own, so no
# upstream can be told a name the edge did not establish.
CLIENT_HEADER = "x-helios-client"
# The edge's route configuration (static, or served by the control plane over RDS) and
# its virtual host.
ROUTE_CONFIG_NAME = "helios"
VIRTUAL_HOST_NAME = "helios"
# The paths of streamed REST requests once the Lua filter rewrote them (a body with
# `stream: true`): a warm model's go to its workers' REST ports (openai_compat/rest.py),
# chat's first.
REST_STREAM_PATHS = ("/v1/chat/completions:stream", "/v1/completions:stream")
# The edge's gRPC-JSON transcoder (routes to the workers' REST ports switch it off).
TRANSCODER_FILTER_NAME = "envoy.filters.http.grpc_json_transcoder"
