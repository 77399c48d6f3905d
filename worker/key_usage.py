"""Tokens served per API key, for the control plane's tokens-per-minute limits.

Envoy sends a warm request straight to a worker, so only the worker sees how many tokens
it took. The worker counts them per key (cumulative, like its per-model counters) and
reports them in every heartbeat; the control plane turns the counts into each key's
tokens per minute and, when a key has spent its budget, routes that key's requests to
itself until the budget refills (proxy/key_budgets.py). Domain only (no protobuf).

A key is kept as a fingerprint (the first 16 hex digits of the SHA-256 of the bearer
token), never as itself, and the ledger holds at most :data:`MAX_KEYS` of them: with no
inference key configured the edge lets any ``authorization`` value through, and a
client must not be able to grow the worker's memory or heartbeats by inventing them.
"""

from __future__ import annotations

import logging

from worker_api.keys import bearer_token, key_fingerprint

logger = logging.getLogger(__name__)

MAX_KEYS = 4096


class KeyUsageLedger:
    """Cumulative tokens per key fingerprint, for the heartbeat."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._tokens: dict[str, int] = {}
        self._max_keys = max_keys
        self._full_logged = False

    def charge(self, authorization: str | None, tokens: int) -> None:
        """A request sent with ``authorization`` took ``tokens`` tokens."""
        token = bearer_token(authorization)
        if token is None or tokens <= 0:
            return
        fingerprint = key_fingerprint(token)
        if fingerprint not in self._tokens and len(self._tokens) >= self._max_keys:
            if not self._full_logged:
                logger.warning(
                    "key usage ledger full; tokens of further keys are not counted",
                    extra={"max_keys": self._max_keys},
                )
                self._full_logged = True
            return
        self._tokens[fingerprint] = self._tokens.get(fingerprint, 0) + tokens

    def totals(self) -> dict[str, int]:
        """Fingerprint -> tokens served since the worker started."""
        return dict(self._tokens)
