"""configure_logging: JSON lines, console format, idempotence."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from runtime.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_one_object_per_line_with_extras() -> None:
    out = io.StringIO()
    configure_logging("worker", "INFO", "json", stream=out)
    log = logging.getLogger("helios.test")
    log.debug("hidden")
    log.info("loaded %s", "llama", extra={"model": "llama", "gpu": 0, "path": object()})
    (line,) = _lines(out)
    assert line["level"] == "INFO"
    assert line["logger"] == "helios.test"
    assert line["service"] == "worker"
    assert line["msg"] == "loaded llama"
    assert line["model"] == "llama" and line["gpu"] == 0
    assert isinstance(line["path"], str)  # not serialisable -> str, the line survives
    assert isinstance(line["ts"], str) and line["ts"].endswith("Z")
    assert "exc_info" not in line


def test_json_exception_is_a_string() -> None:
    out = io.StringIO()
    configure_logging("worker", "INFO", "json", stream=out)
    try:
        raise ValueError("bad shape")
    except ValueError:
        logging.getLogger("helios.test").exception("failed")
    (line,) = _lines(out)
    assert line["level"] == "ERROR"
    assert isinstance(line["exc_info"], str)
    assert "Traceback" in line["exc_info"] and "ValueError: bad shape" in line["exc_info"]


def test_extra_cannot_clobber_fixed_keys() -> None:
    out = io.StringIO()
    configure_logging("worker", "INFO", "json", stream=out)
    logging.getLogger("x").info("hi", extra={"service": "impostor"})
    (line,) = _lines(out)
    assert line["service"] == "worker" and line["extra_service"] == "impostor"


def test_console_format_is_readable() -> None:
    out = io.StringIO()
    configure_logging("proxy", "DEBUG", "console", stream=out)
    logging.getLogger("helios.test").debug("routing", extra={"model": "m"})
    text = out.getvalue()
    assert "DEBUG" in text and "proxy" in text and "routing" in text and "model='m'" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_idempotent_and_reconfigurable() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("worker", "INFO", "json", stream=first)
    configure_logging("worker", "WARNING", "json", stream=second)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_helios_handler", False)]
    assert len(ours) == 1
    logging.getLogger("x").warning("once")
    logging.getLogger("x").info("filtered")
    assert first.getvalue() == ""
    assert [line["msg"] for line in _lines(second)] == ["once"]


def test_rejects_unknown_format_and_level() -> None:
    with pytest.raises(ValueError):
        configure_logging("worker", "INFO", "xml")
    with pytest.raises(ValueError):
        configure_logging("worker", "LOUD", "json")
