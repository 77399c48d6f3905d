"""Every metric deploy/ names (alerts, prometheus-adapter rules, the Grafana dashboard,
the HPAs: tests/support/deploy_refs.py) is exported by a live mesh. A chat completion and a
streamed one go through Envoy, warm and again after an eviction (a cold start through
the proxy), then each process's Prometheus endpoint (the metrics ports `helios up
--ready-file` reports) is scraped. tests/deploy checks the same names offline against
the metric definitions; this checks that the processes deploy/ scrapes export them, with
samples wherever this traffic makes some."""

from __future__ import annotations

import shutil
import time
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.deploy_refs import exposed_names, referenced_metrics
from support.mesh_harness import Mesh

from worker.engine_metrics import REFRESH_SECONDS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
]

MESSAGES = [{"role": "user", "content": "Tell me about the sun."}]
# Engine metric refreshes a scrape waits at most for the reloaded model's gauges.
SETTLE_REFRESHES = 10

# Labelled counters of events a healthy mesh without memory pressure never has: their
# families are on the page (HELP and TYPE) but no series until the first event.
EVENT_ONLY = frozenset(
    {
        "helios_storaged_demotions_total",  # a tier full
        "helios_storaged_evictions_total",  # a tier full
        "helios_worker_queue_dropped_total",  # the admission queue full or timed out
    }
)


class Page:
    """What one process's /metrics page exports: every series name its families can
    have, and the names that have samples."""

    def __init__(self, text: str) -> None:
        families = list(text_string_to_metric_families(text))
        self.names = exposed_names(families)
        self.sampled = {sample.name for family in families for sample in family.samples}


def scrape(port: int) -> Page:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return Page(response.read().decode())


def owns(process: str, metric: str) -> bool:
    """Whether ``metric`` is the kind of ``process`` (helios_worker_* is worker-N's,
    helios_proxy_* the proxy's...); every process has the runtime's helios_grpc_*."""
    kind = process.split("-")[0]
    return metric.startswith((f"helios_{kind}_", "helios_grpc_"))


def chat_and_stream(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
    )
    assert reply.choices[0].message.content is not None
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)


def send_traffic(mesh: Mesh) -> None:
    """Through Envoy: a chat completion and a streamed one on the warm model (Envoy to
    the worker's InferenceService, which helios_worker_* count), then the same after an
    eviction (the first goes the proxy's cold path: a cold start, helios_proxy_*). The
    model is warm again afterwards, as other tests of the session's mesh expect."""
    client = openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)
    chat_and_stream(client, mesh.model)
    request = urllib.request.Request(
        f"{mesh.rest_url}/admin/evict/{mesh.model}", method="DELETE", headers=mesh.admin_headers()
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    chat_and_stream(client, mesh.model)


def unsampled(pages: dict[str, Page], referenced: dict[str, str]) -> dict[str, str]:
    """The referenced metrics (but the event-only ones) without a series on any page."""
    return {
        metric: where
        for metric, where in referenced.items()
        if metric not in EVENT_ONLY and not any(metric in page.sampled for page in pages.values())
    }


def test_every_metric_deploy_names_is_exported(mesh: Mesh) -> None:
    send_traffic(mesh)
    services = mesh.info["services"]
    assert {"proxy", "storaged", "registry", "estimator", "worker-0"} <= set(services)
    assert all(service["metrics_port"] for service in services.values()), services
    referenced = referenced_metrics()
    assert len(referenced) > 30
    assert set(referenced) >= EVENT_ONLY  # else the exemption above is stale
    # The worker's engine gauges are set every REFRESH_SECONDS from the engine, and
    # dropped while its model is unloaded: the reloaded model's come back within one.
    deadline = time.monotonic() + SETTLE_REFRESHES * REFRESH_SECONDS
    while True:
        pages = {name: scrape(service["metrics_port"]) for name, service in services.items()}
        if not unsampled(pages, referenced) or time.monotonic() > deadline:
            break
        time.sleep(REFRESH_SECONDS / 4)

    exporters = {
        metric: sorted(name for name, page in pages.items() if metric in page.names)
        for metric in referenced
    }
    missing = {metric: referenced[metric] for metric, where in exporters.items() if not where}
    assert not missing, f"deploy/ names metrics no process of the mesh exports: {missing}"

    misplaced = {
        metric: where
        for metric, where in exporters.items()
        if not any(owns(process, metric) for process in where)
    }
    assert not misplaced, f"exported only by processes it does not belong to: {misplaced}"

    without_series = unsampled(pages, referenced)
    assert not without_series, f"exported without a single series after traffic: {without_series}"
