"""What workers served without the proxy: the requests Envoy routes straight to a worker's
InferenceService never pass through the proxy, so their use reaches it only as each
worker's cumulative per-model counters in heartbeats. Domain only (no protobuf).

The worker counts only those direct requests; the requests the proxy relays (Generate,
Prefill/Decode: the cold path) it counts itself where it relays them. The two never
overlap, so registry usage reports add both without counting a request twice.

Counters are turned into deltas per (worker, model): the first report of a pair is a
baseline (the proxy may have restarted, or the worker may have served the model before
under an earlier proxy: those requests were reported then), and a counter that went
backwards (the worker restarted) counts from zero again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServedTotals:
    """One model's cumulative counters on one worker, or the difference of two."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_request_unix_ms: int = 0  # when a request last arrived or ended (0: never)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ServedDelta:
    """What one worker served of one model between two of its heartbeats."""

    requests: int
    tokens: int
    active: bool  # a request arrived or ended in between


class ServedLedger:
    """The last counters each worker reported, per model."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], ServedTotals] = {}

    def update(self, address: str, model: str, totals: ServedTotals) -> ServedDelta | None:
        """What ``address`` served of ``model`` since its previous report; None for the
        first report (a baseline)."""
        key = (address, model)
        before = self._last.get(key)
        self._last[key] = totals
        if before is None:
            return None
        if totals.requests < before.requests:  # the worker restarted: counting anew
            before = ServedTotals()
        return ServedDelta(
            requests=totals.requests - before.requests,
            tokens=max(0, totals.tokens - before.tokens),
            active=totals.last_request_unix_ms != before.last_request_unix_ms,
        )

    def forget(self, address: str) -> None:
        """Drop a worker that left the fleet."""
        for key in [k for k in self._last if k[0] == address]:
            del self._last[key]


class KeyTokensLedger:
    """The last per-key token counters each worker reported (cumulative, by key
    fingerprint), turned into what each key spent between two heartbeats. The first
    report of a worker is a baseline, and a counter that went backwards (the worker
    restarted) counts from zero, as for :class:`ServedLedger`."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}

    def update(self, address: str, totals: dict[str, int]) -> dict[str, int]:
        """Fingerprint -> tokens ``address`` served since its previous report."""
        before = self._last.get(address)
        self._last[address] = dict(totals)
        if before is None:
            return {}
        spent = {}
        for fingerprint, total in totals.items():
            previous = before.get(fingerprint, 0)
            delta = total - previous if total >= previous else total
            if delta > 0:
                spent[fingerprint] = delta
        return spent

    def forget(self, address: str) -> None:
        """Drop a worker that left the fleet."""
        self._last.pop(address, None)
