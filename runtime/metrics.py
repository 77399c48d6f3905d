"""Prometheus metrics: the /metrics endpoint and per-RPC server metrics (recorded by
:class:`runtime.interceptors.RuntimeInterceptor`).

Metric objects are module-level, so they are registered exactly once per process in
prometheus_client's default registry; any number of servers in one process (tests,
an all-in-one launcher) share them without duplicate-registration errors. Labels follow
go-grpc-prometheus: ``service`` is the full gRPC service name (``helios.v1.WorkerService``)
and ``method`` the RPC name; which Helios process it is comes from the scrape target.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "GRPC_HANDLED",
    "GRPC_HANDLING_SECONDS",
    "GRPC_IN_FLIGHT",
    "GRPC_STARTED",
    "REQUEST_LATENCY_BUCKETS",
    "TOKEN_INTERVAL_BUCKETS",
    "MetricsServer",
    "RpcObservation",
    "final_code",
    "serve_metrics",
    "start_metrics_server",
]

# The buckets of request histograms, shared by the proxy and the worker so that a figure
# both measure (time to first token, time per output token) compares bucket for bucket.
REQUEST_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_INTERVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

GRPC_STARTED = Counter(
    "helios_grpc_server_started_total",
    "RPCs started on the server.",
    ["service", "method"],
)
GRPC_HANDLED = Counter(
    "helios_grpc_server_handled_total",
    "RPCs completed on the server, by final status code (streams count when they end).",
    ["service", "method", "code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "helios_grpc_server_handling_seconds",
    "Time from an RPC starting to its final status (whole stream for streaming RPCs).",
    ["service", "method"],
    # LLM calls range from a millisecond health check to minutes of streamed tokens.
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
GRPC_IN_FLIGHT = Gauge(
    "helios_grpc_server_in_flight",
    "RPCs currently being handled.",
    ["service", "method"],
)

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class MetricsServer:
    """A running /metrics HTTP endpoint; :meth:`close` stops it (servers in tests do)."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Start the /metrics endpoint in a daemon thread; port 0 picks a free one."""
    httpd, thread = start_http_server(port, addr=host)
    return MetricsServer(httpd, thread)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Start the /metrics endpoint for the life of the process; returns the bound port."""
    return serve_metrics(port, host).port


def _status_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code in _CODES_BY_VALUE:
        return _CODES_BY_VALUE[code].name
    return grpc.StatusCode.UNKNOWN.name


def final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status the client will see, as best the server can tell."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # Cancelled by grpc: either the deadline passed or the client/server gave up.
        try:
            remaining = context.time_remaining()
        except Exception:  # pragma: no cover - context already torn down
            remaining = None
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED.name
        return grpc.StatusCode.CANCELLED.name
    code = context.code()  # set by context.abort() / set_code(); None when untouched
    if code is not None:
        return _status_name(code)
    if exc is not None:
        # Escaped every interceptor: grpc itself answers UNKNOWN.
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class ChildrenByLabel:
    """A metric's children that share their leading label values, one per value of the
    last label, each looked up once: ``labels()`` takes a lock and hashes the values on
    every call, and hot paths would pay that per request."""

    __slots__ = ("_children", "_leading", "_metric")

    def __init__(self, metric: Any, *leading: str) -> None:
        self._metric = metric
        self._leading = leading
        self._children: dict[str, Any] = {}

    def __call__(self, last: str) -> Any:
        child = self._children.get(last)
        if child is None:
            child = self._children[last] = self._metric.labels(*self._leading, last)
        return child


class MethodMetrics:
    """The metric children of one RPC method, looked up once (see ChildrenByLabel)."""

    __slots__ = ("handled", "handling_seconds", "in_flight", "started")

    def __init__(self, service: str, method: str) -> None:
        self.started = GRPC_STARTED.labels(service, method)
        self.in_flight = GRPC_IN_FLIGHT.labels(service, method)
        self.handling_seconds = GRPC_HANDLING_SECONDS.labels(service, method)
        self.handled = ChildrenByLabel(GRPC_HANDLED, service, method)  # by status code


class RpcObservation:
    """Start/finish bookkeeping for one RPC; finish() is recorded at most once."""

    __slots__ = ("_done", "_metrics", "_start")

    def __init__(self, metrics: MethodMetrics) -> None:
        self._metrics = metrics
        self._start = time.perf_counter()
        self._done = False
        metrics.started.inc()
        metrics.in_flight.inc()

    def finish(self, code: str) -> None:
        if self._done:
            return
        self._done = True
        metrics = self._metrics
        metrics.in_flight.dec()
        metrics.handled(code).inc()
        metrics.handling_seconds.observe(time.perf_counter() - self._start)
