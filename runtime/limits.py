"""How large a request may be, per RPC and per field: one table for every Helios server and
for the edge (edge/routes.py sizes Envoy's per-route body limits from the same numbers).

Three layers, each below the next, so a request is refused by the cheapest check that can:

1. The edge (Envoy): request headers <= :data:`EDGE_MAX_HEADER_KB`, REST bodies per route
   (:data:`INFERENCE_BODY_BYTES` for chat and completions, :data:`ESTIMATOR_BODY_BYTES` for
   the estimator, :data:`CONTROL_BODY_BYTES` for everything else): 413 / 431.
2. The gRPC server: grpc core refuses a message above the server's receive limit (the
   largest per-method limit of the services that server hosts, see runtime.server) before
   Python sees it; the shared interceptor then checks each message against its method's
   own limit (:func:`request_limit`) *before* parsing it (runtime.interceptors).
3. The servicers and domain code: per-field limits (prompt bytes before tokenizing, model
   ids, stop sequences, message counts; openai_compat.params and the services' own
   validation), and errors that quote a client's input quote at most
   :data:`MAX_QUOTED_CHARS` of it (:func:`quote`).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CONTROL_BODY_BYTES",
    "CONTROL_REQUEST_BYTES",
    "EDGE_MAX_HEADER_KB",
    "EMBEDDINGS_BODY_BYTES",
    "ESTIMATOR_BODY_BYTES",
    "ESTIMATOR_REQUEST_BYTES",
    "HEARTBEAT_REQUEST_BYTES",
    "INFERENCE_BODY_BYTES",
    "INFERENCE_REQUEST_BYTES",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_ID_BYTES",
    "MAX_MESSAGES",
    "MAX_PROMPT_BYTES",
    "MAX_QUOTED_CHARS",
    "MAX_STOP_BYTES",
    "METADATA_HARD_LIMIT_BYTES",
    "METADATA_SOFT_LIMIT_BYTES",
    "UPLOAD_REQUEST_BYTES",
    "XDS_REQUEST_BYTES",
    "bounded_message",
    "quote",
    "request_limit",
    "server_receive_limit",
]

KIB = 1024
MIB = 1024 * KIB

# --- fields -------------------------------------------------------------------------
# The text of a prompt, or of all of a chat's messages together, in UTF-8 bytes: checked
# before anything tokenizes it. 4 MiB is ~1M tokens of English, past any context served.
MAX_PROMPT_BYTES = 4 * MIB
# A chat's messages.
MAX_MESSAGES = 4096
# A model id, registry id, alias, file name or any other identifier a client names.
MAX_ID_BYTES = 256
# One stop sequence.
MAX_STOP_BYTES = 1024
# What an error message quotes of a client's input, and the longest error message a
# server sends at all (grpc-message travels as a header: a long one trips the receiver's
# metadata limit and turns into RESOURCE_EXHAUSTED far from its cause).
MAX_QUOTED_CHARS = 80
MAX_ERROR_MESSAGE_CHARS = 1024
# A Unix socket's path (sun_path holds 108 bytes, the terminating NUL included).
MAX_SOCKET_PATH_BYTES = 107


def bounded_message(message: str) -> str:
    """``message`` cut to :data:`MAX_ERROR_MESSAGE_CHARS`, saying so when it was."""
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 15] + "... (truncated)"


# --- gRPC messages --------------------------------------------------------------------
# Control RPCs (Stat, Heartbeat, admin, catalogue reads, health, reflection): ids and
# numbers only.
CONTROL_REQUEST_BYTES = 64 * KIB
# A completion request: the prompt (MAX_PROMPT_BYTES) plus its framing. Twice the edge's
# REST body limit, so no JSON body Envoy admits transcodes into a message the server
# refuses (protobuf is never more than ~1.4x the JSON it came from: nested empty lists).
INFERENCE_REQUEST_BYTES = 16 * MIB
# Estimator requests carry a model's config.json (BatchEstimate: many of them).
ESTIMATOR_REQUEST_BYTES = 8 * MIB
# UploadModel: a header listing every file, then pieces of at most 1 MiB
# (registry.upload.MAX_UPLOAD_CHUNK) each.
UPLOAD_REQUEST_BYTES = 4 * MIB
# Envoy's ADS requests (node metadata, resource names, a NACK's error text).
XDS_REQUEST_BYTES = 4 * MIB
# A heartbeat to a decode-role worker lists its models' prefill endpoints (a few per model).
HEARTBEAT_REQUEST_BYTES = 256 * KIB

_INFERENCE_METHODS = (
    "/helios.v1.InferenceService/CreateChatCompletion",
    "/helios.v1.InferenceService/StreamChatCompletion",
    "/helios.v1.InferenceService/StreamChatCompletionEvents",
    "/helios.v1.InferenceService/CreateCompletion",
    "/helios.v1.InferenceService/StreamCompletion",
    "/helios.v1.InferenceService/StreamCompletionEvents",
    "/helios.v1.InferenceService/CreateEmbedding",
    # Relayed generations carry the same prompt.
    "/helios.v1.WorkerService/Generate",
    "/helios.v1.WorkerService/Prefill",
    "/helios.v1.WorkerService/Decode",
)
_ESTIMATOR_METHODS = (
    "/helios.v1.EstimatorService/EstimateMemory",
    "/helios.v1.EstimatorService/BatchEstimate",
    "/helios.v1.EstimatorService/OptimizeMemory",
)

_METHOD_LIMITS: dict[str, int] = {
    **dict.fromkeys(_INFERENCE_METHODS, INFERENCE_REQUEST_BYTES),
    **dict.fromkeys(_ESTIMATOR_METHODS, ESTIMATOR_REQUEST_BYTES),
    "/helios.v1.RegistryService/UploadModel": UPLOAD_REQUEST_BYTES,
    "/helios.v1.WorkerService/Heartbeat": HEARTBEAT_REQUEST_BYTES,
}
_SERVICE_LIMITS: dict[str, int] = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": XDS_REQUEST_BYTES,
}

# --- the edge -------------------------------------------------------------------------
# REST bodies per route. The estimator is allowed no more than chat.
INFERENCE_BODY_BYTES = 8 * MIB
ESTIMATOR_BODY_BYTES = 4 * MIB
# Embeddings: a list of token ids grows ~5.5x into protobuf (each JSON number "1," is an
# 11-byte Value), so 2 MiB of JSON stays below INFERENCE_REQUEST_BYTES whatever it holds.
EMBEDDINGS_BODY_BYTES = 2 * MIB
CONTROL_BODY_BYTES = 64 * KIB
# All of a request's headers together: 431 above. Below grpc's metadata soft limit with
# room for what Envoy adds, so no client header reaches a server as RESOURCE_EXHAUSTED.
EDGE_MAX_HEADER_KB = 8
# grpc's own metadata limits on every server (runtime.server). grpc's defaults (8 KiB soft,
# 16 KiB hard, rejecting at random in between) are below the edge's 8 KiB plus Envoy's
# additions.
METADATA_SOFT_LIMIT_BYTES = 16 * KIB
METADATA_HARD_LIMIT_BYTES = 24 * KIB


def request_limit(method: str) -> int:
    """The most bytes one request message of ``method`` (``/pkg.Service/Method``) may
    hold."""
    limit = _METHOD_LIMITS.get(method)
    if limit is not None:
        return limit
    service = method.lstrip("/").rpartition("/")[0]
    return _SERVICE_LIMITS.get(service, CONTROL_REQUEST_BYTES)


def server_receive_limit(services: Iterable[str]) -> int:
    """grpc core's receive limit for a server hosting ``services`` (full names): the
    largest per-method limit among them, never below :data:`CONTROL_REQUEST_BYTES`."""
    limits = [CONTROL_REQUEST_BYTES]
    for service in services:
        prefix = f"/{service}/"
        limits += [limit for method, limit in _METHOD_LIMITS.items() if method.startswith(prefix)]
        limits.append(_SERVICE_LIMITS.get(service, CONTROL_REQUEST_BYTES))
    return max(limits)


def quote(value: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters with the
    original length said when longer: an error never echoes unbounded input."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
