"""ServerSettings validation and flag/environment precedence."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runtime.config import ConfigError, ServerSettings, add_server_arguments, settings_from_args

ENV_FIELDS = (
    "HOST",
    "PORT",
    "METRICS_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DRAIN_SECONDS",
    "READY_FILE",
    "OTLP_ENDPOINT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's shell may export HELIOS_* for `helios up`; tests start clean.
    for field in ENV_FIELDS:
        monkeypatch.delenv(f"HELIOS_{field}", raising=False)
        monkeypatch.delenv(f"HELIOS_WORKER_{field}", raising=False)


def parse(argv: list[str], service: str = "worker") -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, service)
    return settings_from_args(parser.parse_args(argv), service)


def test_defaults() -> None:
    s = parse([])
    assert s == ServerSettings(service="worker")
    assert (s.host, s.port, s.metrics_port) == ("127.0.0.1", 0, 0)
    assert (s.log_level, s.log_format, s.drain_seconds) == ("INFO", "json", 10.0)
    assert s.event_loop == "uvloop"
    assert s.ready_file is None and s.otlp_endpoint is None


def test_flags() -> None:
    s = parse(
        [
            "--host=0.0.0.0",
            "--port=50051",
            "--metrics-port=-1",
            "--log-level=debug",
            "--log-format=console",
            "--drain-seconds=2.5",
            "--event-loop=asyncio",
            "--ready-file=/tmp/w.json",
            "--otlp-endpoint=localhost:4317",
        ]
    )
    assert s.host == "0.0.0.0"
    assert (s.port, s.metrics_port, s.metrics_enabled) == (50051, -1, False)
    assert (s.log_level, s.log_format, s.drain_seconds) == ("DEBUG", "console", 2.5)
    assert s.event_loop == "asyncio"
    assert s.ready_file == Path("/tmp/w.json")
    assert s.otlp_endpoint == "localhost:4317"


def test_env_defaults_service_specific_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_PORT", "7000")
    monkeypatch.setenv("HELIOS_WORKER_PORT", "7001")
    monkeypatch.setenv("HELIOS_LOG_LEVEL", "warning")
    monkeypatch.setenv("HELIOS_WORKER_DRAIN_SECONDS", "3")
    monkeypatch.setenv("HELIOS_READY_FILE", "/tmp/ready.json")
    s = parse([])
    assert s.port == 7001
    assert s.log_level == "WARNING"
    assert s.drain_seconds == 3.0
    assert s.ready_file == Path("/tmp/ready.json")
    # Another service only sees the shared variables.
    other = parse([], service="proxy")
    assert other.port == 7000 and other.drain_seconds == 10.0


def test_flag_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_WORKER_PORT", "7001")
    assert parse(["--port", "7002"]).port == 7002


def test_bad_env_value_names_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HELIOS_WORKER_PORT", "fifty")
    with pytest.raises(SystemExit):
        parse([])
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--port", "70000"], "port"),
        (["--port", "-1"], "port"),
        (["--metrics-port", "70000"], "metrics_port"),
        (["--metrics-port", "-2"], "metrics_port"),
        (["--log-level", "LOUD"], "log_level"),
        (["--log-format", "xml"], "log_format"),
        (["--event-loop", "tokio"], "event_loop"),
        (["--drain-seconds", "-1"], "drain_seconds"),
        (["--drain-seconds", "nan"], "drain_seconds"),
    ],
)
def test_validation_names_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(argv)
    assert err.value.field == field
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_env_value_is_validated_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="log_level"):
        parse([])


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="port"):
        ServerSettings(service="worker", port=70000)
    with pytest.raises(ConfigError, match="service"):
        ServerSettings(service="")


def test_service_adds_its_own_flags_on_the_same_parser() -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, "worker")
    parser.add_argument("--model", default="tiny")
    ns = parser.parse_args(["--model", "llama", "--port", "1234"])
    assert ns.model == "llama"
    assert settings_from_args(ns, "worker").port == 1234


def test_settings_from_args_without_shared_flags() -> None:
    with pytest.raises(ConfigError, match="add_server_arguments"):
        settings_from_args(argparse.Namespace(), "worker")
