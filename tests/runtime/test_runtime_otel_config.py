"""The standard OTEL_* variables: where spans go, how, how many, under which name."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)

from runtime import tracing
from runtime.otel_config import GRPC, HTTP_PROTOBUF, sampler_from_env, trace_export_from_env


def test_nothing_set_exports_nothing() -> None:
    export = trace_export_from_env(None, {})
    assert export.endpoint is None and export.protocol == GRPC and export.sample_ratio == 1.0


@pytest.mark.parametrize(
    ("explicit", "env", "endpoint"),
    [
        # The base endpoint, over gRPC: as given.
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "http://collector:4317"),
        # The traces endpoint wins over the base one.
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
            },
            "http://traces:4317",
        ),
        # Helios' own setting (--otlp-endpoint, HELIOS_OTLP_ENDPOINT) wins over both.
        (
            "localhost:4317",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
            },
            "localhost:4317",
        ),
        # OTLP/HTTP: a base endpoint gets /v1/traces, a traces endpoint is used as given.
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            },
            "http://collector:4318/v1/traces",
        ),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/custom",
            },
            "https://collector/custom",
        ),
        (
            "collector:4318",
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "http://collector:4318/v1/traces",
        ),
        # Disabled: nothing, whatever else is set.
        ("localhost:4317", {"OTEL_SDK_DISABLED": "TRUE"}, None),
    ],
)
def test_endpoint(explicit: str | None, env: dict[str, str], endpoint: str | None) -> None:
    assert trace_export_from_env(explicit, env).endpoint == endpoint


def test_protocol_and_insecure() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "x:1"}
    assert trace_export_from_env(None, env).protocol == HTTP_PROTOBUF
    both = {**env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert trace_export_from_env(None, both).protocol == GRPC
    assert trace_export_from_env("localhost:4317", {}).insecure
    assert not trace_export_from_env("https://otel.example.com", {}).insecure


def test_unsupported_protocol_is_warned_about_and_grpc_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.otel_config")
    export = trace_export_from_env("localhost:4317", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert export.protocol == GRPC
    assert "http/json" in caplog.text


@pytest.mark.parametrize(
    ("env", "description", "ratio"),
    [
        ({}, ParentBased(ALWAYS_ON).get_description(), 1.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, ALWAYS_OFF.get_description(), 0.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, None, 0.0),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            TraceIdRatioBased(0.25).get_description(),
            0.25,
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            ParentBased(TraceIdRatioBased(0.1)).get_description(),
            0.1,
        ),
        # Nonsense: warned about, the defaults used.
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, None, 1.0),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, ParentBased(ALWAYS_ON).get_description(), 1.0),
    ],
)
def test_sampler(env: dict[str, str], description: str | None, ratio: float) -> None:
    if description is not None:
        assert sampler_from_env(env).get_description() == description
    assert trace_export_from_env("localhost:4317", env).sample_ratio == ratio


def test_service_name_is_helios_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    resource = tracing._Provider("worker").resource.attributes
    assert resource[SERVICE_NAME] == "helios-worker"
    assert resource["deployment.environment"] == "staging"
    assert resource[tracing.HELIOS_SERVICE] == "worker"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "inference-eu")
    resource = tracing._Provider("worker").resource.attributes
    assert resource[SERVICE_NAME] == "inference-eu"
    assert resource[tracing.HELIOS_SERVICE] == "worker"


def test_the_sampler_decides_once_exporting() -> None:
    ratio_zero = tracing._Provider("sampled", TraceIdRatioBased(0.0))
    ratio_zero.add_span_processor(tracing._BatchSpanProcessor(_NoExport()))
    assert not ratio_zero.get_tracer("t").start_span("root").is_recording()
    everything = tracing._Provider("sampled")
    everything.add_span_processor(tracing._BatchSpanProcessor(_NoExport()))
    assert everything.get_tracer("t").start_span("root").is_recording()
    ratio_zero.shutdown()
    everything.shutdown()


def test_http_protobuf_gets_the_http_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    export = trace_export_from_env(
        "collector:4318", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    )
    exporter = tracing._otlp_exporter(export)
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"


class _NoExport(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS
