"""The HTTP filter chain of the edge's listener, in order: Lua (edge/lua.py) -> buffer
(body limits) -> grpc_json_transcoder -> api_key_auth -> local_ratelimit (only with
rate-limited keys) -> router."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.access import EdgeAccess
from edge.lua import load_lua_filter
from edge.names import (
    API_KEY_FILTER_NAME,
    BUFFER_FILTER_NAME,
    LUA_FILTER_NAME,
    RATE_LIMIT_DESCRIPTOR,
    RATE_LIMIT_FILTER_NAME,
    TRANSCODER_FILTER_NAME,
)
from runtime.limits import INFERENCE_BODY_BYTES

_API_KEY_AUTH_TYPE = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"


def _lua_filter() -> dict[str, Any]:
    return {
        "name": LUA_FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": load_lua_filter()},
        },
    }


def _buffer_filter() -> dict[str, Any]:
    """After Lua (whose response side then gives its 413 OpenAI's error shape), before
    the transcoder (which would otherwise stream any size of JSON into one message)."""
    return {
        "name": BUFFER_FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": INFERENCE_BODY_BYTES,
        },
    }


def _transcoder_filter(descriptor_path: Path, services: Sequence[str]) -> dict[str, Any]:
    return {
        "name": TRANSCODER_FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(Path(descriptor_path).resolve()),
            "services": list(services),
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "preserve_proto_field_names": True,
                "stream_newline_delimited": False,
                "stream_sse_style_delimited": True,
            },
            "convert_grpc_status": True,
            # Model ids are org/name and clients escape them whole in a path
            # (openai's models.retrieve sends helios%2Fmodel): bind them decoded, "/"
            # included. Routing still matches the path as sent.
            "url_unescape_spec": "ALL_CHARACTERS",
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": False,
            },
            # Without this an unknown query parameter (e.g. Azure's api-version) makes the
            # transcoder pass the REST request through untranscoded, and the gRPC upstream
            # resets it (503).
            "ignore_unknown_query_parameters": True,
            "auto_mapping": False,
            "match_incoming_request_route": False,
        },
    }


def _api_key_filter(access: EdgeAccess) -> dict[str, Any]:
    """api_key_auth with every key; which clients a route admits is per route."""
    return {
        "name": API_KEY_FILTER_NAME,
        "typed_config": {
            "@type": _API_KEY_AUTH_TYPE,
            "credentials": [{"key": key, "client": client} for key, client in access.clients()],
            # "Bearer <key>" (the OpenAI SDK's form): the filter strips the scheme. The key
            # travels on (the proxy's cold path applies its per-key rate limits).
            "key_sources": [{"header": "authorization"}],
        },
    }


def _rate_limit_filter(access: EdgeAccess) -> dict[str, Any]:
    """Per-key request rate limits (token buckets refilled one request at a time), as
    RESOURCE_EXHAUSTED / HTTP 429 with Retry-After. Requests of keys without a limit only
    meet a bucket far above what one Envoy serves."""
    intervals = [60.0 / rpm for _, rpm in access.requests_per_minute]
    return {
        "name": RATE_LIMIT_FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "helios_api_keys",
            "token_bucket": {
                "max_tokens": 1_000_000,
                "tokens_per_fill": 1_000_000,
                "fill_interval": "1s",
            },
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "descriptors": [
                {
                    "entries": [{"key": RATE_LIMIT_DESCRIPTOR, "value": f"Bearer {key}"}],
                    "token_bucket": {
                        "max_tokens": rpm,
                        "tokens_per_fill": 1,
                        "fill_interval": f"{60.0 / rpm:.3f}s",
                    },
                }
                for key, rpm in access.requests_per_minute
            ],
            "rate_limited_as_resource_exhausted": True,
            # The soonest a limited key gets a request back (one refill of the fastest key).
            "response_headers_to_add": [
                {
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    "header": {
                        "key": "retry-after",
                        "value": str(max(1, math.ceil(min(intervals, default=1.0)))),
                    },
                }
            ],
        },
    }


def http_filters(
    *,
    access: EdgeAccess,
    descriptor_path: Path,
    transcoded_services: Sequence[str],
) -> list[dict[str, Any]]:
    """The listener's HTTP filters."""
    return [
        _lua_filter(),
        _buffer_filter(),
        _transcoder_filter(descriptor_path, transcoded_services),
        # After the transcoder: REST calls are judged on the gRPC method they became.
        _api_key_filter(access),
        *([_rate_limit_filter(access)] if access.requests_per_minute else []),
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]
