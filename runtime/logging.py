"""Structured logging for every Helios process, on the standard library only.

``json`` (the default) writes one JSON object per line so log shippers need no parsing
rules; ``console`` is for a human at a terminal. Either way the service name is on every
line, because ``helios up`` interleaves the output of several services. A line logged
while a trace is current (an RPC's span, or the caller's trace context passed on) carries
its ``trace_id`` and ``span_id`` (W3C hex, as a tracing backend shows them), so a log
line leads to its trace and back.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

__all__ = ["ConsoleFormatter", "JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}

# Marks the handler configure_logging installed, so a second call replaces it instead
# of stacking a duplicate (and leaves handlers others installed, e.g. pytest's, alone).
_HANDLER_MARK = "_helios_handler"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


def _trace_ids() -> dict[str, str]:
    """The current trace's ids (``trace_id``, ``span_id``), or none outside a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


def _timestamp(record: logging.LogRecord) -> str:
    ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, service, msg, extras, exc_info."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
            **_trace_ids(),
        }
        for key, value in _extras(record).items():
            # Never let an extra overwrite the fixed keys a log pipeline relies on.
            out[key if key not in out else f"extra_{key}"] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra that is not JSON-serialisable must not lose the line.
        return json.dumps(out, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL service logger: msg key=value ...`` plus any traceback."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{ts} {record.levelname:<7} {self.service} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v!r}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(
    service: str, level: str = "INFO", fmt: str = "json", *, stream: TextIO | None = None
) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``fmt``; safe to call repeatedly.

    Returns the installed handler (useful to tests). Calling again replaces the handler
    this function installed before, so the format, level or stream can change.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r}; expected 'json' or 'console'")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter(service))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # Python's "last resort" warnings and warnings.warn() should land in the same stream.
    logging.captureWarnings(True)
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, ClientInputFilter) for f in grpc_logger.filters):
        grpc_logger.addFilter(ClientInputFilter())
    return handler


class RateLimitedFilter(logging.Filter):
    """Records whose message starts with ``PREFIX`` become one record per ``INTERVAL_S``,
    rewritten by :meth:`rewrite` and counting (``not_logged_since_last``) how many were
    dropped since the last; other records pass unchanged."""

    PREFIX = ""
    INTERVAL_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last = -self.INTERVAL_S
        self._suppressed = 0

    def rewrite(self, record: logging.LogRecord) -> None:
        """Say ``record`` in the rate-limited record's words (in place)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        now = time.monotonic()
        if now - self._last < self.INTERVAL_S:
            self._suppressed += 1
            return False
        self.rewrite(record)
        record.not_logged_since_last = self._suppressed
        self._last, self._suppressed = now, 0
        return True


class ClientInputFilter(RateLimitedFilter):
    """grpc logs an ERROR with a traceback for every request whose metadata is not UTF-8
    ("Invalid encoding on b'...'"): a client's bytes, not a failure of the server, and one
    record per request lets any client fill the logs. Such records become one WARNING per
    minute (without the traceback), saying how many were not logged."""

    PREFIX = "Invalid encoding on"

    def rewrite(self, record: logging.LogRecord) -> None:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "request metadata that is not UTF-8 (a client's input) was ignored"
        record.args = None
        record.exc_info = None
        record.exc_text = None
