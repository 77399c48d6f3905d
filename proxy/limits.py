"""API keys, per-key rate limits and load shedding (domain).

Keys and limits are enforced in the proxy (not Envoy): Envoy's JSON transcoder passes
the ``authorization: Bearer <key>`` header on as gRPC metadata, so REST and gRPC
clients meet the same checks. A key's limits are token buckets refilled per minute:
requests per minute, and tokens (prompt + completion) per minute, charged when a
request ends (a bucket may go into debt; the key waits until it is positive again).

Errors: no or unknown key -> UNAUTHENTICATED (HTTP 401); a limit hit or a full queue ->
RESOURCE_EXHAUSTED with a retry-after hint (HTTP 429 + Retry-After). No capacity to
place a model is UNAVAILABLE (HTTP 503) instead, so clients can tell "slow down" from
"cannot be served now".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ShedError, UnauthenticatedError
from worker_api.keys import bearer_token, key_fingerprint

# ShedError reasons (the helios_proxy_shed_total label).
RATE_LIMIT = "rate_limit"
QUEUE_FULL = "queue_full"


@dataclass
class TokenBucket:
    """``per_minute`` units a minute, at most ``per_minute`` at once."""

    per_minute: float
    level: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.level = self.per_minute
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        rate = self.per_minute / 60.0
        self.level = min(self.per_minute, self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float, now: float | None = None) -> float:
        """Seconds until ``amount`` is available (0: it is now)."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        if self.level >= amount:
            return 0.0
        return (amount - self.level) * 60.0 / self.per_minute

    def take(self, amount: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._refill(now)
        self.level -= amount


@dataclass(frozen=True)
class KeyLimits:
    """One API key's limits (0 = unlimited)."""

    key: str
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


def parse_key_spec(spec: str) -> KeyLimits:
    """``KEY[:RPM[:TPM]]`` -> limits (RPM/TPM 0 or absent = unlimited)."""
    parts = spec.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"expected KEY[:REQUESTS_PER_MINUTE[:TOKENS_PER_MINUTE]], got {spec!r}")
    try:
        numbers = [int(p) if p else 0 for p in parts[1:]]
    except ValueError:
        raise ValueError(f"limits must be integers in {spec!r}") from None
    if any(n < 0 for n in numbers):
        raise ValueError(f"limits must be >= 0 in {spec!r}")
    numbers += [0] * (2 - len(numbers))
    return KeyLimits(parts[0], numbers[0], numbers[1])


def load_key_file(path: Path) -> list[KeyLimits]:
    """One ``KEY[:RPM[:TPM]]`` per line; blank lines and ``#`` comments skipped."""
    specs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            specs.append(parse_key_spec(line))
    return specs


def _require_room(bucket: TokenBucket | None, now: float, what: str) -> None:
    """Shed the request when ``bucket`` (None: no such limit) has no room for one more."""
    if bucket is None:
        return
    wait = bucket.wait_for(1, now)
    if wait > 0:
        raise ShedError(
            f"{what} rate limit exceeded for this API key", reason=RATE_LIMIT, retry_after_s=wait
        )


class _KeyState:
    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self.requests = (
            TokenBucket(limits.requests_per_minute) if limits.requests_per_minute else None
        )
        self.tokens = TokenBucket(limits.tokens_per_minute) if limits.tokens_per_minute else None


class ApiKeys:
    """Checks a request's key and its limits. No keys configured: open access."""

    def __init__(self, keys: Iterable[KeyLimits] = ()) -> None:
        self._keys = {k.key: _KeyState(k) for k in keys}
        # Workers report the tokens they served per key by fingerprint (heartbeats).
        self._by_fingerprint = {key_fingerprint(key): key for key in self._keys}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def admit(self, authorization: str | None) -> str:
        """The key of a request allowed to start now (``""`` when keys are off)."""
        if not self._keys:
            return ""
        if not authorization:
            raise UnauthenticatedError("an API key is required: authorization: Bearer <key>")
        key = bearer_token(authorization)
        if key is None or key not in self._keys:
            raise UnauthenticatedError("invalid API key")
        state = self._keys[key]
        now = time.monotonic()
        # Tokens are charged once counted (charge); a request slot is taken now.
        _require_room(state.tokens, now, "token")
        _require_room(state.requests, now, "request")
        if state.requests is not None:
            state.requests.take(1, now)
        return key

    def charge(self, key: str, tokens: int) -> None:
        """A request of ``key`` used ``tokens`` tokens."""
        state = self._keys.get(key)
        if state is not None and state.tokens is not None:
            state.tokens.take(tokens)

    def charge_reported(self, fingerprint: str, tokens: int) -> None:
        """A worker served ``tokens`` tokens to the key with ``fingerprint`` (requests
        Envoy sent it straight; unknown fingerprints are other callers' and ignored)."""
        key = self._by_fingerprint.get(fingerprint)
        if key is not None:
            self.charge(key, tokens)

    def exhausted(self, now: float | None = None) -> frozenset[str]:
        """The keys whose tokens-per-minute budget is spent now: the control plane routes
        their requests to the proxy (which answers 429 with Retry-After) until it
        refills."""
        now = time.monotonic() if now is None else now
        return frozenset(
            key
            for key, state in self._keys.items()
            if state.tokens is not None and state.tokens.wait_for(1, now) > 0
        )


class Admission:
    """Load shedding: at most ``max_per_model`` requests per model in the proxy at once
    (waiting for a cold load or running). More are refused at once (429), never queued
    without bound."""

    def __init__(self, max_per_model: int, retry_after_s: float = 1.0) -> None:
        self.max_per_model = max_per_model
        self.retry_after_s = retry_after_s
        self.inflight: dict[str, int] = {}

    def enter(self, model: str) -> None:
        current = self.inflight.get(model, 0)
        if self.max_per_model and current >= self.max_per_model:
            raise ShedError(
                f"model {model} has {current} requests in flight, the most this proxy"
                " queues; retry later",
                reason=QUEUE_FULL,
                retry_after_s=self.retry_after_s,
            )
        self.inflight[model] = current + 1

    def leave(self, model: str) -> None:
        left = self.inflight.get(model, 1) - 1
        if left > 0:
            self.inflight[model] = left
        else:  # forget idle models: the name may be any string a client sent
            self.inflight.pop(model, None)
