"""The proxy's own Prometheus metrics (per model), beside the runtime's RPC metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from runtime.metrics import REQUEST_LATENCY_BUCKETS, TOKEN_INTERVAL_BUCKETS, ChildrenByLabel

TIME_TO_FIRST_TOKEN = Histogram(
    "helios_proxy_time_to_first_token_seconds",
    "Time from a request's arrival at the proxy to its first generated text.",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "helios_proxy_time_per_output_token_seconds",
    "Mean time between output tokens after the first, per request.",
    ["model"],
    buckets=TOKEN_INTERVAL_BUCKETS,
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
QUEUE_TIME = Histogram(
    "helios_proxy_queue_time_seconds",
    "Time from a request's arrival at the proxy to its dispatch to a worker (includes"
    " waiting for a cold load).",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
COLD_STARTS = Counter(
    "helios_proxy_cold_starts_total",
    "Loads the proxy started because a request found its model READY nowhere.",
    ["model"],
)
# deploy/'s worker HPAs scale on it (an External metric per model, through
# prometheus-adapter): requests piling up here mean the model's replicas are too few.
QUEUED_REQUESTS = Gauge(
    "helios_proxy_queued_requests",
    "Requests at the proxy waiting for a READY replica of their model (its cold start or"
    " its pool's scale-up from zero in flight).",
    ["model"],
)
COLD_START_SECONDS = Histogram(
    "helios_proxy_cold_start_seconds",
    "Duration of a model load started by the proxy (LoadModel until READY).",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MODEL_LOADS = Counter(
    "helios_proxy_model_loads_total",
    "LoadModel calls by the proxy, by worker and outcome (ready, no_room, failed).",
    ["model", "worker", "outcome"],
)
SCALE_UPS = Counter(
    "helios_proxy_scale_ups_total",
    "Replicas added because a model's demand exceeded its target concurrency per replica.",
    ["model"],
)
MODEL_UNLOADS = Counter(
    "helios_proxy_model_unloads_total",
    "UnloadModel calls by the proxy, by reason (idle_ttl, pressure, scale, evict).",
    ["model", "reason"],
)
MEMORY_ESTIMATES = Counter(
    "helios_proxy_memory_estimates_total",
    "Memory needs worked out, by source: estimator, or weights (the model directory's"
    " weight bytes, used when the estimator is absent or cannot answer).",
    ["source"],
)
SHED = Counter(
    "helios_proxy_shed_total",
    "Requests refused before routing, by reason (rate_limit, queue_full, no_capacity,"
    " unauthenticated).",
    ["reason"],
)
WORKER_MEMORY = Gauge(
    "helios_proxy_worker_memory_bytes",
    "Memory each worker declares in its heartbeat: kind=total|free. source=configured"
    " means the worker's configured capacity (no GPU), the figure the scheduler places"
    " models by; source=nvml is the GPU's own figure.",
    ["worker", "kind", "source"],
)
WORKER_UP = Gauge(
    "helios_proxy_worker_routable",
    "1 when the proxy routes new requests to the worker (its last heartbeat succeeded).",
    ["worker"],
)
STORED_MODELS = Gauge(
    "helios_proxy_worker_stored_model",
    "1 for each model a worker's node storaged holds, by its fastest tier (ram, nvme, remote).",
    ["worker", "model", "tier"],
)
READY_REPLICAS = Gauge("helios_proxy_ready_replicas", "READY replicas of each model.", ["model"])
REGISTRY_CALLS = Counter(
    "helios_proxy_registry_calls_total",
    "Calls to the registry by kind (list, resolve, usage, prefetch, eviction) and outcome"
    " (ok, failed). Failures are logged; requests never wait on usage reports.",
    ["kind", "outcome"],
)
USAGE_DROPPED = Counter(
    "helios_proxy_usage_dropped_total",
    "Usage records dropped because the registry stayed unreachable and the pending batch was full.",
)
PREFETCHES = Counter(
    "helios_proxy_prefetches_total",
    "Models preloaded from the registry's prefetch hints into free memory.",
    ["model"],
)
DISAGGREGATED_REQUESTS = Counter(
    "helios_proxy_disaggregated_requests_total",
    "Requests served by a prefill pool and a decode pool (Prefill on one worker, Decode on"
    " another) rather than by one worker.",
    ["model"],
)
PREFILL_SECONDS = Histogram(
    "helios_proxy_prefill_seconds",
    "Duration of a disaggregated request's Prefill call (prompt KV cache and first token).",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
KV_HANDOFF_SECONDS = Histogram(
    "helios_proxy_kv_handoff_seconds",
    "From a Decode call to its first step: the KV-cache transfer from the prefill worker"
    " plus one decode step.",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "helios_proxy_decode_seconds",
    "Duration of a disaggregated request's Decode stream, from the call to its last step.",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
DECODE_RETRIES = Counter(
    "helios_proxy_decode_retries_total",
    "Decodes that failed before their first token and were run again (Prefill again,"
    " since a KV cache can be fetched once, then Decode on another decode worker).",
    ["model"],
)


# The model label of requests for a model no agent or catalogue knows: the name is
# whatever a client sent, and one label value per typo would grow without bound.
UNKNOWN_MODEL = "_unknown"


class ModelMetrics:
    """One model's request metric children, looked up once (see ChildrenByLabel): five
    ``labels()`` calls per request otherwise."""

    __slots__ = (
        "generated_tokens",
        "prompt_tokens",
        "queue_time",
        "requests",
        "time_per_output_token",
        "time_to_first_token",
    )

    def __init__(self, model: str) -> None:
        self.time_to_first_token = TIME_TO_FIRST_TOKEN.labels(model)
        self.time_per_output_token = TIME_PER_OUTPUT_TOKEN.labels(model)
        self.generated_tokens = GENERATED_TOKENS.labels(model)
        self.prompt_tokens = PROMPT_TOKENS.labels(model)
        self.queue_time = QUEUE_TIME.labels(model)
        self.requests = ChildrenByLabel(REQUESTS, model)  # by outcome


_BY_MODEL: dict[str, ModelMetrics] = {}


def for_model(model: str) -> ModelMetrics:
    """The cached children of a model requests have been routed for."""
    found = _BY_MODEL.get(model)
    if found is None:
        found = _BY_MODEL[model] = ModelMetrics(model)
    return found
