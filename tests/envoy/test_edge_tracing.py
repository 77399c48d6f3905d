"""Envoy's span: the OpenTelemetry tracer in the rendered bootstrap, accepted by Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli.envoy import find_envoy_binary
from edge import Upstream, render_envoy_config
from edge.tracing import COLLECTOR_CLUSTER, EdgeTracing, edge_tracing
from runtime.otel_config import TraceExport

PROXY = Upstream("proxy", "127.0.0.1", 50051)


def _render(descriptor: Path, tracing: EdgeTracing | None) -> str:
    return render_envoy_config(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        descriptor_path=descriptor,
        grpc_upstreams={"helios.v1.InferenceService": PROXY},
        default_grpc_upstream=PROXY,
        metrics_upstream=None,
        xds_upstream=PROXY,
        tracing=tracing,
    )


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _collector(config: dict[str, Any]) -> dict[str, Any]:
    clusters = config["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == COLLECTOR_CLUSTER)


def test_the_services_export_becomes_envoys() -> None:
    grpc = edge_tracing(TraceExport("localhost:4317", "grpc", sample_ratio=0.25))
    assert grpc == EdgeTracing("localhost", 4317, "grpc", "", False, 25.0)
    http = edge_tracing(TraceExport("https://otel.example.com/v1/traces", "http/protobuf"))
    assert http == EdgeTracing(
        "otel.example.com", 443, "http/protobuf", "https://otel.example.com/v1/traces", True
    )
    assert edge_tracing(TraceExport(None)) is None
    with pytest.raises(ValueError):
        edge_tracing(TraceExport("http://:4317"))


def test_tracer_collector_and_access_log(descriptor: Path) -> None:
    config = json.loads(_render(descriptor, EdgeTracing("collector.local", 4317)))
    tracing = _hcm(config)["tracing"]
    provider = tracing["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["service_name"] == "helios-envoy"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        COLLECTOR_CLUSTER
    )
    assert tracing["random_sampling"] == {"value": 100.0}
    assert {"tag": "gen_ai.request.model", "request_header": {"name": "x-helios-model"}} in (
        tracing["custom_tags"]
    )
    collector = _collector(config)
    assert collector["type"] == "STRICT_DNS"
    assert "typed_extension_protocol_options" in collector  # HTTP/2 for OTLP/gRPC
    assert "transport_socket" not in collector
    log_format = _hcm(config)["access_log"][0]["typed_config"]["log_format"]
    assert "trace=%TRACE_ID%" in log_format["text_format_source"]["inline_string"]

    untraced = json.loads(_render(descriptor, None))
    assert "tracing" not in _hcm(untraced)
    assert all(c["name"] != COLLECTOR_CLUSTER for c in untraced["static_resources"]["clusters"])


@pytest.mark.parametrize(
    "export",
    [
        TraceExport("127.0.0.1:4317", "grpc", sample_ratio=0.5),
        TraceExport("http://127.0.0.1:4318/v1/traces", "http/protobuf"),
        TraceExport("https://otel.example.com:4317", "grpc"),
    ],
    ids=["grpc", "http", "https"],
)
def test_envoy_accepts_the_tracing_config(
    descriptor: Path, tmp_path: Path, export: TraceExport
) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(_render(descriptor, edge_tracing(export)))
    result = subprocess.run(
        [find_envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
