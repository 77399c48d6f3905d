"""The figures of the requests a worker serves straight from the edge (its
InferenceService): Prometheus metrics per model, and the cumulative counters its
heartbeat reports so that the proxy, which no longer relays those requests, still knows
each model's use (idle-TTL clock, registry usage reports).

Requests the proxy relays through WorkerService.Generate/Prefill/Decode are not counted
here: the proxy counts those itself (proxy/metrics.py), so nothing is counted twice.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from runtime.metrics import REQUEST_LATENCY_BUCKETS, TOKEN_INTERVAL_BUCKETS, ChildrenByLabel

TIME_TO_FIRST_TOKEN = Histogram(
    "helios_worker_time_to_first_token_seconds",
    "Time from a request's arrival at the worker's InferenceService to its first generated token.",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "helios_worker_time_per_output_token_seconds",
    "Mean time between output tokens after the first, per request.",
    ["model"],
    buckets=TOKEN_INTERVAL_BUCKETS,
)
GENERATED_TOKENS = Counter(
    "helios_worker_generated_tokens_total",
    "Completion tokens of finished InferenceService requests.",
    ["model"],
)
PROMPT_TOKENS = Counter(
    "helios_worker_prompt_tokens_total",
    "Prompt tokens of finished InferenceService requests.",
    ["model"],
)
# vLLM's request_prompt_tokens / request_generation_tokens buckets (1-2-5 steps).
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
REQUEST_PROMPT_TOKENS = Histogram(
    "helios_worker_request_prompt_tokens",
    "Prompt tokens per finished InferenceService request (vllm:request_prompt_tokens).",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
REQUEST_GENERATION_TOKENS = Histogram(
    "helios_worker_request_generation_tokens",
    "Generated tokens per finished InferenceService request (vllm:request_generation_tokens).",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
E2E_REQUEST_LATENCY = Histogram(
    "helios_worker_e2e_request_latency_seconds",
    "Time from a finished InferenceService request's arrival at the worker to its last"
    " token (vllm:e2e_request_latency_seconds).",
    ["model"],
    buckets=(0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240),
)
REQUESTS = Counter(
    "helios_worker_requests_total",
    "InferenceService requests by how they ended: stop, length (finished), abort (the"
    " client left, or the model was unloaded under it), error.",
    ["model", "finish_reason"],
)

# The fair admission queue ahead of each model's engine (worker/admission.py), for
# requests of both contracts (InferenceService and relayed WorkerService.Generate).
# deploy/'s HPA scales workers on helios_worker_queue_depth (a Pods metric: the sum over
# a pod's models).
QUEUE_DEPTH = Gauge(
    "helios_worker_queue_depth",
    "Requests waiting for a turn at the model's engine on this worker (admission queue).",
    ["model"],
)
QUEUE_WAIT = Histogram(
    "helios_worker_queue_wait_seconds",
    "Time a request waited in the admission queue before its engine took it (0: at once).",
    ["model"],
    buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_DROPPED = Counter(
    "helios_worker_queue_dropped_total",
    "Requests that never reached the engine: full (refused, the queue or the client's share"
    " of it was full), cancelled (the client left while queued), deadline (it passed while"
    " queued).",
    ["model", "reason"],
)


def _now_unix_ms() -> int:
    return time.time_ns() // 1_000_000


class ModelUsage:
    """One model's figures on this worker: its metric children (looked up once, see
    ChildrenByLabel) and the heartbeat's cumulative counters."""

    __slots__ = (
        "completion_tokens_total",
        "e2e_latency",
        "first_tokens_total",
        "generated_tokens",
        "last_request_unix_ms",
        "prompt_tokens",
        "prompt_tokens_total",
        "request_generation_tokens",
        "request_prompt_tokens",
        "requests",
        "requests_total",
        "time_per_output_token",
        "time_to_first_token",
        "time_to_first_token_seconds_total",
    )

    def __init__(self, model: str) -> None:
        self.time_to_first_token = TIME_TO_FIRST_TOKEN.labels(model)
        self.time_per_output_token = TIME_PER_OUTPUT_TOKEN.labels(model)
        self.generated_tokens = GENERATED_TOKENS.labels(model)
        self.prompt_tokens = PROMPT_TOKENS.labels(model)
        self.request_prompt_tokens = REQUEST_PROMPT_TOKENS.labels(model)
        self.request_generation_tokens = REQUEST_GENERATION_TOKENS.labels(model)
        self.e2e_latency = E2E_REQUEST_LATENCY.labels(model)
        self.requests = ChildrenByLabel(REQUESTS, model)  # by finish reason
        # Finished requests (stop or length) and their tokens, since the worker started.
        self.requests_total = 0
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0
        # When a request last arrived or ended (0: never).
        self.last_request_unix_ms = 0
        # Requests that produced a first token and the sum of their times to it (the
        # status page's mean time to first token, through the heartbeat).
        self.first_tokens_total = 0
        self.time_to_first_token_seconds_total = 0.0

    def arrived(self) -> None:
        self.last_request_unix_ms = _now_unix_ms()

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)
        self.first_tokens_total += 1
        self.time_to_first_token_seconds_total += seconds

    def finished(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        decode_seconds: float | None,
        e2e_seconds: float | None = None,
    ) -> None:
        """A request ended with stop or length; ``decode_seconds`` is the time from its
        first token to its last (None when it produced none), ``e2e_seconds`` from its
        arrival to its end (None: not measured)."""
        self.requests_total += 1
        self.prompt_tokens_total += prompt_tokens
        self.completion_tokens_total += completion_tokens
        self.generated_tokens.inc(completion_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(completion_tokens)
        if e2e_seconds is not None:
            self.e2e_latency.observe(e2e_seconds)
        if decode_seconds is not None and completion_tokens > 1:
            self.time_per_output_token.observe(decode_seconds / (completion_tokens - 1))

    def ended(self, finish_reason: str) -> None:
        """Every request ends here once, however it ended."""
        self.requests(finish_reason).inc()
        self.last_request_unix_ms = _now_unix_ms()


class UsageLedger:
    """The :class:`ModelUsage` of every model this worker has served, kept for the
    worker's lifetime (counters only grow; a reload of the model keeps counting)."""

    def __init__(self) -> None:
        self._models: dict[str, ModelUsage] = {}

    def of(self, model: str) -> ModelUsage:
        """``model``'s figures, created on first use. Only models that are loaded here
        get one, so client-chosen names cannot grow the metric labels."""
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = ModelUsage(model)
        return found

    def get(self, model: str) -> ModelUsage | None:
        return self._models.get(model)
