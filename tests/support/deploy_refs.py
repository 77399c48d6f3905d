"""What deploy/ says about metrics: every PromQL expression (alerts, prometheus-adapter
rules, the Grafana dashboard) and every metric an HPA names, and the metric names those
reference. Shared by tests/deploy (offline, against the services' metric definitions) and
tests/e2e (against a live mesh's /metrics)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.metrics_core import Metric

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "components" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ADAPTER_VALUES = MONITORING / "prometheus-adapter-values.yaml"
DASHBOARD = MONITORING / "helios-dashboard.json"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())

# Series Prometheus makes itself rather than scraping them from a target.
PROMETHEUS_SERIES = frozenset({"up"})

# What Grafana and prometheus-adapter put into a query before Prometheus sees it, as
# values that keep the query's meaning for a parse.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".*"}
_ADAPTER_TEMPLATE = {"<<.LabelMatchers>>": 'namespace="helios"', "<<.GroupBy>>": "pod"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


@dataclass(frozen=True)
class Expr:
    """One PromQL expression of deploy/ and where it is."""

    where: str
    promql: str


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay, as documents."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def adapter_rules() -> dict[str, list[dict[str, Any]]]:
    """prometheus-adapter's rules by kind: custom (Pods metrics) and external."""
    rules = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))["rules"]
    return {"custom": rules.get("custom", []), "external": rules.get("external", [])}


def adapter_series(rule: dict[str, Any]) -> str:
    """The metric an adapter rule serves (its seriesQuery's name, kept as is)."""
    names = metric_names(rule["seriesQuery"])
    assert len(names) == 1, rule
    return names.pop()


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, the ones inside collapsed rows too."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _grafana(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def expressions() -> list[Expr]:
    """Every PromQL expression in deploy/, as Prometheus would receive it."""
    found = [
        Expr(f"{ALERTS.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in alert_rules()
    ]
    for kind, rules in adapter_rules().items():
        for rule in rules:
            where = f"{ADAPTER_VALUES.name}: {kind} {rule['seriesQuery']}"
            found.append(Expr(where, rule["seriesQuery"]))
            query = rule["metricsQuery"].replace("<<.Series>>", adapter_series(rule))
            for placeholder, value in _ADAPTER_TEMPLATE.items():
                query = query.replace(placeholder, value)
            found.append(Expr(where, query))
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            where = f"{DASHBOARD.name}: {panel['title']} {target['refId']}"
            found.append(Expr(where, _grafana(target["expr"])))
    return found


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (raises ValueError if it does not
    parse)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(promql), visit)
    return names


def recorded_names() -> set[str]:
    """Series that deploy/'s own recording rules make."""
    return {rule["record"] for rule in alert_rules() if "record" in rule}


def hpa_metrics(docs: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """The metric names the HPAs of rendered documents name, by metric type (Pods,
    External, Object)."""
    found: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] != "HorizontalPodAutoscaler":
            continue
        for metric in doc["spec"].get("metrics", []):
            kind = metric["type"]
            if kind == "Resource":
                continue
            source = metric[kind[0].lower() + kind[1:]]
            found.setdefault(kind, set()).add(source["metric"]["name"])
    return found


def referenced_metrics() -> dict[str, str]:
    """Every metric deploy/ names (name -> one place that names it), but the series its
    own recording rules make and those Prometheus makes itself."""
    found: dict[str, str] = {}
    for expr in expressions():
        for name in metric_names(expr.promql):
            found.setdefault(name, expr.where)
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        for name in _LABEL_VALUES.findall(text):
            found.setdefault(name, f"{DASHBOARD.name}: variable {variable['name']}")
    for overlay in OVERLAYS:
        for kind, names in hpa_metrics(render(overlay)).items():
            for name in names:
                found.setdefault(name, f"overlay {overlay}: HPA {kind} metric")
    for name in recorded_names() | PROMETHEUS_SERIES:
        found.pop(name, None)
    return found


def exposed_names(families: Iterable[Metric]) -> set[str]:
    """The series names a /metrics page with these families can have: a counter's
    ``_total``, a histogram's ``_bucket``/``_count``/``_sum`` and so on, whether or not a
    labelled child has been made yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in families:
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names
