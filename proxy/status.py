"""The mesh at a glance: what the front door's status page (GET /) shows, from
AdminService.GetStatus (domain only; proxy/status_probe.py asks the workers and storaged).

* Models: warm (a replica takes requests), loading (with its phase: downloading through
  storaged, or loading into the engine) or cold; their load and throughput.
* Workers: state, memory, running/waiting requests, KV cache use.
* Tokens per second and mean time to first token: warm requests go from Envoy straight
  to the workers, so only the workers count them. Each GetStatus probes the workers
  (a Heartbeat probe, which changes nothing) for their cumulative counters; the meter
  keeps the samples of the last minute and turns them into rates.
* Recent errors: the proxy's own WARNING and ERROR log records (a logging handler), with
  addresses and server paths taken out: the answer is for the inference role.

Never an address, a path or a key in any of it.
"""

from __future__ import annotations

import collections
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from proxy.fleet import WorkerView

# Tokens per second: over the samples of the last few seconds; TTFT: the last minute.
RATE_WINDOW_S = 10.0
TTFT_WINDOW_S = 60.0
MAX_RECENT_ERRORS = 30

WARM = "warm"
LOADING = "loading"
COLD = "cold"


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters on one worker (its heartbeat's)."""

    requests: int = 0
    completion_tokens: int = 0
    first_tokens: int = 0
    first_token_seconds: float = 0.0


@dataclass(frozen=True)
class TierFigures:
    tier: str
    used_bytes: int
    capacity_bytes: int
    files: int
    hits: int


@dataclass(frozen=True)
class ModelSummary:
    model: str
    state: str
    phase: str = ""
    ready_replicas: int = 0
    running: int = 0
    waiting: int = 0
    tokens_per_second: float = 0.0
    time_to_first_token_s: float = 0.0
    # Its latest load on a worker serving it, (phase, seconds) (worker/load_phases.py).
    load_phases: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class WorkerFigures:
    worker_id: str
    state: str
    healthy: bool
    memory_total: int
    memory_free: int
    running: int
    waiting: int
    kv_cache_usage: float
    models: tuple[str, ...]


@dataclass(frozen=True)
class ErrorRecord:
    unix_ms: int
    source: str
    message: str


@dataclass(frozen=True)
class MeshStatus:
    status: str
    version: str
    models: tuple[ModelSummary, ...]
    workers: tuple[WorkerFigures, ...]
    tiers: tuple[TierFigures, ...]
    tokens_per_second: float
    time_to_first_token_s: float
    requests_total: int
    errors: tuple[ErrorRecord, ...]
    unix_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)


# ------------------------------------------------------------------ recent errors

_ADDRESS = re.compile(
    r"(\b(?:ipv[46]:)?(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b)|(\[[0-9a-fA-F:]+\](?::\d+)?)"
    r"|(\blocalhost:\d+\b)"
)
_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*")
_SOURCE_KEYS = ("dependency", "model", "worker_id", "worker", "service")


def scrub(text: str) -> str:
    """``text`` without internal addresses or server paths."""
    return _PATH.sub("a server path", _ADDRESS.sub("an internal address", text))[:300]


class RecentErrors(logging.Handler):
    """Keeps the latest WARNING+ records of the process, scrubbed, newest first."""

    def __init__(self, capacity: int = MAX_RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self._records: collections.deque[ErrorRecord] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            source = next(
                (str(getattr(record, key)) for key in _SOURCE_KEYS if hasattr(record, key)),
                record.name.removeprefix("proxy."),
            )
            message = record.getMessage()
            detail = getattr(record, "error", None)
            if detail:
                message = f"{message}: {detail}"
            self._records.appendleft(
                ErrorRecord(int(record.created * 1000), scrub(source), scrub(message))
            )
        except Exception:  # a log handler must never raise into the code that logs
            self.handleError(record)

    def latest(self) -> tuple[ErrorRecord, ...]:
        return tuple(self._records)


# ------------------------------------------------------------------ throughput


class ThroughputMeter:
    """Samples of every (worker, model)'s cumulative counters, turned into the mesh's
    and each model's tokens per second and mean time to first token."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, dict[tuple[str, str], ModelCounters]]]
        self._samples = collections.deque()

    def add(self, now: float, counters: Mapping[tuple[str, str], ModelCounters]) -> None:
        self._samples.append((now, dict(counters)))
        while self._samples and now - self._samples[0][0] > TTFT_WINDOW_S:
            self._samples.popleft()

    def _bases(self, window_s: float) -> tuple[float, dict[tuple[str, str], ModelCounters]]:
        """(time of the oldest sample within ``window_s``, each pair's counters at the
        oldest sample within it that has the pair)."""
        now = self._samples[-1][0]
        recent = [sample for sample in self._samples if now - sample[0] <= window_s]
        bases: dict[tuple[str, str], ModelCounters] = {}
        for _, counters in recent:
            for key, value in counters.items():
                bases.setdefault(key, value)
        return recent[0][0], bases

    def rates(self) -> dict[str, tuple[float, float]]:
        """Model -> (tokens per second, mean time to first token in seconds); "" is the
        whole mesh. A counter that went backwards (the worker restarted) counts anew."""
        if len(self._samples) < 2:
            return {}
        now, latest = self._samples[-1]
        start, rate_base = self._bases(RATE_WINDOW_S)
        _, ttft_base = self._bases(TTFT_WINDOW_S)
        tokens: dict[str, float] = collections.defaultdict(float)
        firsts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for key, current in latest.items():
            model = key[1]
            # A pair's first report is its baseline (what it counted may be old); one
            # whose counters went backwards (the worker restarted) counts from zero.
            before = rate_base.get(key, current)
            if current.completion_tokens < before.completion_tokens:
                before = ModelCounters()
            for name in (model, ""):
                tokens[name] += current.completion_tokens - before.completion_tokens
            base = ttft_base.get(key, current)
            if current.first_tokens < base.first_tokens:
                base = ModelCounters()
            for name in (model, ""):
                firsts[name][0] += current.first_tokens - base.first_tokens
                firsts[name][1] += current.first_token_seconds - base.first_token_seconds
        elapsed = max(now - start, 1e-9)
        names = {*tokens, *firsts}
        return {
            name: (
                tokens.get(name, 0.0) / elapsed if now > start else 0.0,
                firsts[name][1] / firsts[name][0] if firsts[name][0] else 0.0,
            )
            for name in names
        }


# ------------------------------------------------------------------ models, workers


def _model_state(holders: Sequence[tuple[WorkerView, str]]) -> tuple[str, str]:
    """(state, phase) of a model from (agent, its state there) pairs."""
    if any(agent.routable and state == "ready" for agent, state in holders):
        return WARM, ""
    phases = {state for _, state in holders}
    if "downloading" in phases:
        return LOADING, "downloading"
    if "loading" in phases:
        return LOADING, "loading"
    return COLD, ""


def summarize_models(
    agents: Iterable[WorkerView],
    known: Iterable[str],
    rates: Mapping[str, tuple[float, float]],
) -> tuple[ModelSummary, ...]:
    """Every model an agent holds or the mesh knows (catalogue, registry), by id."""
    holders: dict[str, list[tuple[WorkerView, str]]] = {m: [] for m in known}
    for agent in agents:
        for entry in agent.models.values():
            holders.setdefault(entry.model, []).append((agent, entry.state))
    summaries = []
    for model in sorted(holders):
        held = holders[model]
        state, phase = _model_state(held)
        on = [agent.models[model] for agent, _ in held]
        tokens, ttft = rates.get(model, (0.0, 0.0))
        summaries.append(
            ModelSummary(
                model=model,
                state=state,
                phase=phase,
                ready_replicas=sum(1 for a, s in held if a.routable and s == "ready"),
                running=sum(m.running for m in on),
                waiting=sum(m.waiting for m in on),
                tokens_per_second=tokens,
                time_to_first_token_s=ttft,
                load_phases=_load_phases(model, held),
            )
        )
    return tuple(summaries)


def _load_phases(
    model: str, held: Sequence[tuple[WorkerView, str]]
) -> tuple[tuple[str, float], ...]:
    """``model``'s latest load phases, from a worker serving it first, else any holder."""
    for agent, _ in sorted(held, key=lambda pair: pair[1] != "ready"):
        entry = agent.models.get(model)
        if entry is not None and entry.load_phases:
            return entry.load_phases
    return ()


def summarize_workers(agents: Iterable[WorkerView]) -> tuple[WorkerFigures, ...]:
    return tuple(
        WorkerFigures(
            worker_id=agent.worker_id or f"worker #{index}",
            state=agent.state.value,
            healthy=agent.healthy,
            memory_total=agent.memory_total,
            memory_free=agent.memory_free,
            running=sum(m.running for m in agent.models.values()),
            waiting=sum(m.waiting for m in agent.models.values()),
            kv_cache_usage=max((m.kv_cache_usage for m in agent.models.values()), default=0.0),
            models=tuple(sorted(agent.ready_models)),
        )
        for index, agent in enumerate(sorted(agents, key=lambda a: a.address))
    )
