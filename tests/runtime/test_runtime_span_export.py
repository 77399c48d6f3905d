"""Span export with the collector down: ending a span never waits for it, dropped spans
are one log line, and a stopping process is not held up."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from runtime import tracing
from runtime.otel_config import TraceExport


def _dead_endpoint() -> str:
    """A local port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_a_dead_collector_holds_up_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(tracing, "SHUTDOWN_EXPORT_S", 0.5)
    exporter = tracing._otlp_exporter(TraceExport(_dead_endpoint()))
    assert exporter is not None
    tracing._quiet_dropped_spans()
    provider = tracing._Provider("dead-collector")
    # A small queue that the first batch fills: the rest are dropped, not waited for.
    processor = tracing._BatchSpanProcessor(
        exporter, max_queue_size=16, max_export_batch_size=8, schedule_delay_millis=50
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(200):
        tracer.start_span(f"span-{i}").end()  # returns at once whatever the collector does

    dropped = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in dropped]
    assert "dropping spans" in dropped[0].getMessage()

    # Shutdown gives the queued spans SHUTDOWN_EXPORT_S, not the SDK's 30 s.
    stopper = threading.Thread(target=provider.shutdown, daemon=True)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive()
