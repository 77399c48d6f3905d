"""Log correlation: a JSON log line made while a trace is current names its trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from runtime import tracing
from runtime.logging import configure_logging

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("worker", "INFO", "json", stream=stream)
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_span_names_its_trace_and_one_outside_does_not(
    out: io.StringIO,
) -> None:
    log = logging.getLogger("helios.test")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        log.info("inside", extra={"trace_id": "a client's extra never hides the real one"})
    log.info("outside")
    inside, outside = _lines(out)
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["extra_trace_id"] == "a client's extra never hides the real one"
    assert "trace_id" not in outside and "span_id" not in outside


def test_a_process_that_exports_nothing_logs_the_callers_trace(
    out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The RPC path of runtime/interceptors.py: no span of our own, the caller's context
    # (its W3C traceparent) current while the servicer runs.
    monkeypatch.setattr(tracing, "_provider", tracing._Provider("quiet"))
    metadata = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),)
    span = tracing.RpcSpan("/helios.v1.X/Y", "helios.v1.X", "Y", metadata)
    token = span.enter()
    logging.getLogger("helios.test").warning("while serving")
    span.exit(token)
    span.finish("OK")
    (line,) = _lines(out)
    assert (line["trace_id"], line["span_id"]) == (CALLER_TRACE, CALLER_SPAN)
    assert not trace.get_current_span().get_span_context().is_valid
