"""Outgoing gRPC channels: the one way a Helios service talks to another.

Every channel traces its calls (:class:`runtime.tracing.TracedChannel`: one trace spans
proxy -> estimator -> worker), the same message-size limit as the servers, and
keepalive so a dead peer is noticed in seconds rather than at the next TCP timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import grpc.aio

from runtime.tracing import TracedChannel

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "create_channel",
    "default_client_tls",
    "set_default_client_tls",
]

# Prompts and token streams are small, but embeddings/logprobs batches and model
# metadata are not; 64 MiB on both ends so neither side rejects what the other sends.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Ping every 30 s, give up after 10 s without an ack; also while idle, so a
    # long-lived channel to a worker notices a vanished peer before the next request.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect soon after a peer comes back: grpc's default backoff grows to 120 s, so a
    # service restarted after a long outage stayed unreachable from a channel that had
    # backed off that far (RPCs fail fast while it waits), long after it served again.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


# Process-wide client credentials, set once at start-up by runtime.server.run when the
# service runs with mutual TLS, so every create_channel() caller gets them.
_default_tls: grpc.ChannelCredentials | None = None


def set_default_client_tls(credentials: grpc.ChannelCredentials | None) -> None:
    """Make ``credentials`` what :func:`create_channel` uses when not given ``tls``."""
    global _default_tls
    _default_tls = credentials


def default_client_tls() -> grpc.ChannelCredentials | None:
    return _default_tls


def create_channel(
    target: str,
    *,
    tls: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, int | str]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (``host:port``) with tracing and Helios defaults.

    ``tls``: channel credentials; None means the process default
    (:func:`set_default_client_tls`: mutual TLS under ``--tls-*``), plain-text if unset.
    ``options`` override the defaults by key; ``interceptors`` run inside the tracing.
    """
    merged = dict(CHANNEL_OPTIONS)
    merged.update(dict(options))
    opts = list(merged.items())
    chain = list(interceptors) or None
    if tls is None:
        tls = _default_tls
    if tls is not None:
        return TracedChannel(grpc.aio.secure_channel(target, tls, options=opts, interceptors=chain))
    return TracedChannel(grpc.aio.insecure_channel(target, options=opts, interceptors=chain))
