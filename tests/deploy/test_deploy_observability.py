"""deploy/'s monitoring, offline: every PromQL expression (alerts, prometheus-adapter
rules, dashboard) parses (promql-parser, the Rust PromQL parser's Python binding) and
names only metrics that Helios' services define; the HPAs scale on metrics the adapter
serves; the dashboard is well formed; images have a registry and a tag everywhere; the
dev overlay needs no CRD. tests/e2e/test_metrics_e2e.py checks the same names against a
live mesh's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY
from support.deploy_refs import (
    DASHBOARD,
    DEPLOY,
    OVERLAYS,
    adapter_rules,
    adapter_series,
    alert_rules,
    dashboard,
    dashboard_panels,
    exposed_names,
    expressions,
    hpa_metrics,
    referenced_metrics,
    render,
)

# Every module that defines Prometheus metrics, so that REGISTRY holds them all.
import proxy.metrics
import registry.cloud
import registry.verified_reads
import registry.version_writer
import runtime.metrics
import storaged.cache_metrics
import worker.disagg
import worker.engine_metrics
import worker.metrics

sys.path.insert(0, str(DEPLOY / "schemas"))
from validate_crds import CORE_GROUPS, group_of

_METRIC_MODULES = (
    proxy.metrics,
    registry.cloud,
    registry.verified_reads,
    registry.version_writer,
    runtime.metrics,
    storaged.cache_metrics,
    worker.disagg,
    worker.engine_metrics,
    worker.metrics,
)

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def defined_metrics() -> set[str]:
    """The series names Helios' services can export (what their code defines)."""
    assert _METRIC_MODULES
    return exposed_names(REGISTRY.collect())


def test_deploy_promql_expressions_parse() -> None:
    exprs = expressions()
    assert len(exprs) > 40
    for expr in exprs:
        try:
            promql_parser.parse(expr.promql)
        except ValueError as error:
            pytest.fail(f"{expr.where}: {error}: {expr.promql}")


def test_deploy_promql_parser_rejects_what_prometheus_would() -> None:
    # The check above is only worth something if the parser refuses broken PromQL.
    for broken in ("sum(rate(x[5m])", "rate(x)[5m]", "x{le=2.5}", "histogram_quantile(0.9 x)"):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


@needs_kubectl
def test_deploy_names_only_metrics_helios_defines() -> None:
    defined = defined_metrics()
    missing = {name: where for name, where in referenced_metrics().items() if name not in defined}
    assert not missing, f"deploy/ names metrics no Helios service defines: {missing}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_hpas_scale_on_metrics_the_adapter_serves(overlay: str) -> None:
    served = {kind: {adapter_series(r) for r in rules} for kind, rules in adapter_rules().items()}
    named = hpa_metrics(render(overlay))
    assert named["Pods"] == {
        "helios_worker_num_requests_waiting",
        "helios_worker_kv_cache_usage_perc",
    }
    assert named["Pods"] <= served["custom"]
    assert named["External"] == {"helios_proxy_queued_requests"}
    assert named["External"] <= served["external"]


def test_deploy_alert_rules_are_complete() -> None:
    rules = alert_rules()
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    for name in (
        "HeliosInferenceErrorRateHigh",
        "HeliosTTFTBudgetBurnFast",
        "HeliosKVCacheSaturated",
        "HeliosColdStartFailures",
        "HeliosWorkerDown",
    ):
        assert name in alerts
    for rule in rules:
        assert ("alert" in rule) != ("record" in rule), rule
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
    for rule in rules:
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule


def test_deploy_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        where = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where
    # What the issue asks the dashboard to show, by the metrics that show it.
    shown = " ".join(t["expr"] for p in graphs for t in p["targets"])
    for metric in (
        "helios_worker_requests_total",
        "helios_worker_time_to_first_token_seconds_bucket",
        "helios_worker_time_per_output_token_seconds_bucket",
        "helios_worker_generated_tokens_total",
        "helios_worker_kv_cache_usage_perc",
        "helios_proxy_cold_start_seconds_bucket",
        "helios_storaged_tier_used_bytes",
        "helios_grpc_server_handled_total",
    ):
        assert metric in shown, metric


@needs_kubectl
def test_deploy_dashboard_configmap_carries_the_file() -> None:
    maps = {d["metadata"]["name"]: d for d in render("gpu") if d["kind"] == "ConfigMap"}
    board = maps["helios-grafana-dashboard"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"][DASHBOARD.name]) == dashboard()


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"):
        return []
    spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def has_registry_and_tag(image: str) -> bool:
    name, _, digest = image.partition("@")
    registry, slash, path = name.partition("/")
    if not slash or not ("." in registry or ":" in registry or registry == "localhost"):
        return False
    return bool(digest) or (":" in path and bool(path.rpartition(":")[2]))


def test_deploy_image_check_tells_bare_names_from_full_references() -> None:
    assert has_registry_and_tag("ghcr.io/helios-ai/helios:0.1.0")
    assert has_registry_and_tag("localhost:5000/helios:dev")
    assert has_registry_and_tag("docker.io/envoyproxy/envoy@sha256:abc")
    for bare in ("helios", "helios:0.1.0", "envoyproxy/envoy:v1.34.1", "ghcr.io/helios-ai/helios"):
        assert not has_registry_and_tag(bare), bare


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_every_image_has_a_registry_and_a_tag(overlay: str) -> None:
    docs = render(overlay)
    images = {
        f"{d['kind']}/{d['metadata']['name']}/{c['name']}": c["image"]
        for d in docs
        for c in containers(d)
    }
    assert len(images) >= 7
    bad = {where: image for where, image in images.items() if not has_registry_and_tag(image)}
    assert not bad, bad
    # One image reference everywhere: the CPU image for services and CPU workers, the
    # GPU variant for GPU workers, each with one tag.
    helios = Counter(image for image in images.values() if "/helios:" in image)
    assert len({image.rpartition(":")[0] for image in helios}) == 1, helios
    for where, image in images.items():
        if where.startswith("Deployment/helios-worker-") and where.endswith("/worker"):
            assert image.endswith("-cuda") == (overlay != "dev"), (where, image)
        elif "/helios:" in image:
            assert not image.endswith("-cuda"), (where, image)


@needs_kubectl
def test_deploy_dev_needs_no_crds_and_gpu_brings_istio_and_monitoring() -> None:
    def custom_kinds(overlay: str) -> set[str]:
        return {
            d["kind"] for d in render(overlay) if group_of(str(d["apiVersion"])) not in CORE_GROUPS
        }

    assert custom_kinds("dev") == set()
    wanted = {
        "PeerAuthentication",
        "DestinationRule",
        "AuthorizationPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert custom_kinds("gpu") == wanted
    assert custom_kinds("gpu-mig") == wanted
    namespace = next(d for d in render("gpu") if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    namespace = next(d for d in render("dev") if d["kind"] == "Namespace")
    assert "istio-injection" not in namespace["metadata"]["labels"]


def dockerfile_stages(path: Path) -> list[tuple[str, str]]:
    """(base, name) of every FROM line, in order."""
    stages = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.IGNORECASE)
        if match:
            stages.append((match.group(1), match.group(2) or ""))
    return stages


def test_deploy_dockerfile_builds_a_cpu_default_and_a_gpu_target() -> None:
    dockerfile = DEPLOY / "Dockerfile"
    stages = dockerfile_stages(dockerfile)
    names = [name for _, name in stages]
    assert names[-1] == "cpu", "the last stage is what a plain `docker build` makes"
    assert "gpu" in names
    text = dockerfile.read_text(encoding="utf-8")
    gpu_build = text[text.index("AS build-gpu") : text.index("AS runtime")]
    assert '".[all,vllm-gpu]"' in gpu_build and "torch.version.cuda is not None" in gpu_build
    cpu_build = text[text.index("AS build-cpu") : text.index("AS build-gpu")]
    assert "download.pytorch.org/whl/cpu" in cpu_build
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^vllm-gpu = \["vllm==[0-9.]+"\]', pyproject, re.MULTILINE)
