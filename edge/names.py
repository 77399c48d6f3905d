"""Names the edge's modules share: Envoy's filter names and types, the listener's name,
the REST paths with routes of their own and the transcoded services."""

from __future__ import annotations

# Shared with the control plane (its per-model REST routes switch the transcoder off).
from runtime.edge_names import TRANSCODER_FILTER_NAME as TRANSCODER_FILTER_NAME

# The helios.v1 services that carry google.api.http annotations: the REST surface.
TRANSCODED_SERVICES: tuple[str, ...] = (
    "helios.v1.InferenceService",
    "helios.v1.EstimatorService",
    "helios.v1.AdminService",
)

LISTENER_NAME = "helios_edge"

LUA_FILTER_NAME = "envoy.filters.http.lua"
BUFFER_FILTER_NAME = "envoy.filters.http.buffer"
API_KEY_FILTER_NAME = "envoy.filters.http.api_key_auth"
RATE_LIMIT_FILTER_NAME = "envoy.filters.http.local_ratelimit"
# A filter's per-route config that only switches it off.
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
# The descriptor key under which a request's API key is rate limited.
RATE_LIMIT_DESCRIPTOR = "api_key"

ESTIMATE_REST_PREFIX = "/v1/estimate/"
# Embeddings have a body limit of their own (runtime.limits.EMBEDDINGS_BODY_BYTES); the
# Lua filter routes them by their body's model.
EMBEDDINGS_REST_PATH = "/v1/embeddings"
# AdminService.GetHealth over REST (public).
HEALTH_REST_PATH = "/v1/health"
