"""The front door a person and their tools use (issue 17 part B), through the real Envoy
of `helios up`: the status page in a real browser, /health, /version, /metrics,
/v1/status, gRPC reflection (v1 and v1alpha, every method described), health per
service name, and the CLI finding the running mesh (pull through it, listed at once)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from browser import chromium_page, find_chromium
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.mesh_harness import REPO, Mesh
from support.reflection_client import describe_all, list_services_v1

from models.tinymodel import build_tiny_model

pytestmark = pytest.mark.e2e

MESH_SERVICES = [
    f"helios.v1.{name}"
    for name in (
        "InferenceService",
        "AdminService",
        "WorkerService",
        "EstimatorService",
        "RegistryService",
        "StorageService",
    )
]


def get(mesh: Mesh, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    """(status, content type, body) of GET ``path`` at the front door (not under /v1)."""
    base = mesh.rest_url.removesuffix("/v1")
    request = urllib.request.Request(f"{base}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read().decode()


def helios_home(mesh: Mesh) -> Path:
    return Path(mesh.info["admin_key_file"]).parent


def helios(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    """A `helios` command as a person runs it on the mesh's machine (its HELIOS_HOME)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HELIOS_ADDRESS", "HELIOS_PORT")}
    env["HELIOS_HOME"] = str(helios_home(mesh))
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_conventional_paths(mesh: Mesh) -> None:
    status, kind, body = get(mesh, "/health")
    assert status == 200 and kind == "application/json"
    assert json.loads(body)["status"] in ("ok", "degraded")
    status, kind, body = get(mesh, "/version")
    assert status == 200 and kind == "application/json"
    assert json.loads(body)["name"] == "helios" and json.loads(body)["version"]
    assert get(mesh, "/metrics")[0] == 401  # admin role, as /v1/metrics
    status, kind, body = get(mesh, "/metrics", mesh.admin_headers())
    assert status == 200 and kind.startswith("text/plain")
    assert "helios_proxy_time_to_first_token_seconds" in body
    status, kind, body = get(mesh, "/")
    assert status == 200 and kind == "text/html; charset=utf-8"
    assert "<title>Helios status</title>" in body and "http" not in body.split("<script>")[1]
    assert get(mesh, "/no/such/page")[0] == 404


def test_status_json_has_no_address_path_or_key(mesh: Mesh) -> None:
    status, kind, body = get(mesh, "/v1/status")
    assert status == 200 and kind == "application/json"
    answer = json.loads(body)
    models = {m["model"]: m for m in answer["models"]}
    assert models[mesh.model]["state"] == "warm"
    assert models[mesh.model]["ready_replicas"] == 1
    assert [w["worker_id"] for w in answer["workers"]] == ["worker-0"]
    assert {t["tier"] for t in answer["tiers"]} == {"ram", "ssd"}
    for secret in ("127.0.0.1", str(helios_home(mesh)), mesh.admin_key):
        assert secret not in body


async def test_reflection_v1_and_v1alpha_describe_every_method(mesh: Mesh) -> None:
    def v1() -> list[str]:
        with grpc.insecure_channel(mesh.grpc_address) as channel:
            return list_services_v1(channel)

    over_v1 = await asyncio.to_thread(v1)
    described = await asyncio.to_thread(describe_all, mesh.grpc_address)
    assert sorted(over_v1) == sorted(described.services)
    assert set(MESH_SERVICES) <= set(described.services)
    for service in MESH_SERVICES:
        assert any(name.startswith(service + ".") for name in described.methods), service
    chat = described.methods["helios.v1.InferenceService.CreateChatCompletion"]
    assert chat == (
        "helios.v1.CreateChatCompletionRequest",
        "helios.v1.CreateChatCompletionResponse",
    )
    failed = {name: how for name, how in described.method_files.items() if how != "ok"}
    assert not failed


async def test_health_per_service_name_through_the_front_door(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 5
        for name in ["", *MESH_SERVICES]:
            while True:  # the proxy's mirror refreshes every 0.25 s
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
                    continue
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
                break
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_status_page_in_a_real_browser(mesh: Mesh, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make setup` does)")
    base = mesh.rest_url.removesuffix("/v1")
    async with chromium_page(binary, tmp_path / "profile") as page:
        await page.call("Page.navigate", url=f"{base}/")
        rows = "[...document.querySelectorAll('#models tr')]"
        row = f"{rows}.find(r => r.dataset.key === {json.dumps(mesh.model)})"
        assert await page.wait_for(f"{row}?.className", 20) == "warm"
        assert await page.evaluate("document.getElementById('mesh').textContent") in (
            "ok",
            "degraded",
        )
        assert await page.evaluate("document.querySelectorAll('#workers tr').length") == 2
        before = int(await page.evaluate("document.getElementById('requests').textContent"))
        await asyncio.to_thread(_chat, mesh)
        await page.wait_for(
            f"Number(document.getElementById('requests').textContent) > {before}", 10
        )
        assert page.errors == []


def _chat(mesh: Mesh) -> None:
    body = {
        "model": mesh.model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
    }
    request = urllib.request.Request(
        f"{mesh.rest_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def test_cli_finds_the_running_mesh(mesh: Mesh, tmp_path: Path) -> None:
    """`helios pull ./dir --as org/name` imports through the running registry (the front
    door, admin key) and /v1/models lists the model within a second; `helios status` and
    `helios cache` find the mesh with no flag."""
    model_dir = build_tiny_model(tmp_path / "pulled", seed=7)
    pulled = helios(mesh, "pull", str(model_dir), "--as", "org/pulled", "--no-progress")
    pulled_at = time.monotonic()
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith("org/pulled@")
    assert f"through the mesh at {mesh.grpc_address}" in pulled.stderr
    while True:
        _, _, body = get(mesh, "/v1/models")
        if "org/pulled" in {m["id"] for m in json.loads(body)["data"]}:
            break
        assert time.monotonic() - pulled_at < 1.0, body
        time.sleep(0.05)
    status = helios(mesh, "status")
    assert status.returncode == 0, status.stdout
    assert mesh.model in status.stdout and "worker-0" in status.stdout
    # The served model's last load, by phase (issue 14).
    assert "LAST LOAD" in status.stdout and "engine_start" in status.stdout
    cache = helios(mesh, "cache")
    assert cache.returncode == 0, cache.stdout
    assert "TIER" in cache.stdout and "ram" in cache.stdout
