"""The proxy's own Prometheus metrics (per model), beside the runtime's RPC metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TIME_TO_FIRST_TOKEN = Histogram(
    "helios_proxy_time_to_first_token_seconds",
    "Time from a request's arrival at the proxy to its first generated text.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "helios_proxy_time_per_output_token_seconds",
    "Mean time between output tokens after the first, per request.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
GENERATED_TOKENS = Counter(
    "helios_proxy_generated_tokens_total", "Completion tokens relayed to clients.", ["model"]
)
PROMPT_TOKENS = Counter(
    "helios_proxy_prompt_tokens_total", "Prompt tokens of completed requests.", ["model"]
)
REQUESTS = Counter(
    "helios_proxy_requests_total",
    "Generation requests by outcome (finished, error, cancelled).",
    ["model", "outcome"],
)
