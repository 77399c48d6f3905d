"""API keys as the worker and the control plane both name them: a worker reports each key's
tokens by fingerprint (heartbeats), the control plane knows the keys and matches the
fingerprints. Domain only (no protobuf)."""

from __future__ import annotations

import hashlib

FINGERPRINT_HEX_DIGITS = 16


def key_fingerprint(key: str) -> str:
    """The fingerprint of an API key (the bearer token itself, without a scheme)."""
    return hashlib.sha256(key.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header (the scheme in any case),
    or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
