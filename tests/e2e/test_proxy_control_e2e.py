"""The proxy's control plane and cold path against real worker processes on 127.0.0.1.

Three workers (the transformers CPU engine, the tiny model built into a tmp dir) run as
processes with a small declared memory capacity each; the proxy runs in this process,
built from its own flags, on a real gRPC port. Each test starts a fresh proxy and leaves
the workers empty (and alive) for the next.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from helios.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as wpb
from prometheus_client import REGISTRY

from cli.processes import ServiceProcess
from cli.status import fetch_status
from models.tinymodel import build_tiny_model
from proxy.admin import AdminServicer
from proxy.control import ControlPlane
from proxy.estimate import weights_bytes
from proxy.server import build_control_plane, build_parser
from proxy.servicer import InferenceServicer
from proxy.settings import ProxySettings
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server
from runtime.settings import from_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WORKERS = 3


@dataclass
class Workers:
    processes: list[ServiceProcess]
    model_dir: Path
    huge_dir: Path
    model_bytes: int
    capacity: int
    root: Path

    def addresses(self) -> list[str]:
        return [p.address for p in self.processes]

    async def restart(self, index: int) -> None:
        process = self.processes[index]
        if process.process is not None and process.process.returncode is None:
            return
        await process.start()
        await process.wait_ready(60)

    async def empty(self) -> None:
        """Every worker alive with no model."""
        for index in range(len(self.processes)):
            await self.restart(index)
        for address in self.addresses():
            async with grpc.aio.insecure_channel(address) as channel:
                stub = worker_pb2_grpc.WorkerServiceStub(channel)
                beat = await stub.Heartbeat(wpb.HeartbeatRequest(), timeout=10)
                for model in beat.models:
                    await stub.UnloadModel(
                        wpb.UnloadModelRequest(model=model.model, drain_timeout_seconds=1),
                        timeout=15,
                    )


def _worker(root: Path, index: int, capacity: int) -> ServiceProcess:
    return ServiceProcess(
        name=f"worker{index}",
        module="worker.server",
        # The proxy's catalogue loads local paths under root (LoadModel's --model-root).
        args=[
            "--worker-id",
            f"w{index}",
            "--memory-capacity-bytes",
            str(capacity),
            "--model-root",
            str(root),
        ],
        state_dir=root,
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def workers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Workers]:
    root = tmp_path_factory.mktemp("proxy-mesh")
    model_dir = await asyncio.to_thread(build_tiny_model, root / "tiny")
    size = await asyncio.to_thread(weights_bytes, model_dir)
    # A model no worker can hold: the tiny model's files plus padding weights.
    huge_dir = root / "huge"
    shutil.copytree(model_dir, huge_dir)
    with (huge_dir / "padding.safetensors").open("wb") as f:
        f.truncate(size * 4)
    capacity = size * 3 // 2  # one tiny model per worker, never two
    processes = [_worker(root, i, capacity) for i in range(WORKERS)]
    await asyncio.gather(*(p.start() for p in processes))
    try:
        await asyncio.gather(*(p.wait_ready(120) for p in processes))
        yield Workers(processes, model_dir, huge_dir, size, capacity, root)
    finally:
        await asyncio.gather(*(p.stop(5) for p in processes))


@dataclass
class Proxy:
    router: ControlPlane
    server: RunningServer
    channel: grpc.aio.Channel

    @property
    def inference(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def holders(self, model: str) -> list[str]:
        return sorted(
            a.address
            for a in self.router.pool.agents()
            if a.routable and model in a.models and a.models[model].state == "ready"
        )


async def start_proxy(workers: Workers, *flags: str) -> Proxy:
    argv = [f"--worker={a}" for a in workers.addresses()]
    settings = from_namespace(ProxySettings, build_parser().parse_args([*argv, *flags]))
    router = build_control_plane(settings)
    await router.refresh()
    router.start()
    servicer = InferenceServicer(router.serving)
    admin = AdminServicer(router.warm)

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        return ["helios.v1.InferenceService", "helios.v1.AdminService"]

    server = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
    return Proxy(router, server, grpc.aio.insecure_channel(server.address))


@pytest_asyncio.fixture(loop_scope="module")
async def fleet(workers: Workers) -> AsyncIterator[Workers]:
    await workers.empty()
    yield workers


@pytest_asyncio.fixture(loop_scope="module")
async def proxies() -> AsyncIterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        await proxy.channel.close()
        await proxy.server.stop(0)
        await proxy.router.stop()


def loads(model: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "helios_proxy_model_loads":
            continue
        for sample in metric.samples:
            if (
                sample.name.endswith("_total")
                and sample.labels.get("model") == model
                and sample.labels.get("outcome") == "ready"
            ):
                total += sample.value
    return total


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chat(model: str, max_tokens: int = 4, **extra: object) -> inference_pb2.ChatCompletionParams:
    return inference_pb2.ChatCompletionParams(
        model=model,
        messages=[
            inference_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="hi"))
        ],
        max_tokens=max_tokens,
        temperature=0,
        **extra,  # type: ignore[arg-type]
    )


async def complete(proxy: Proxy, model: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    response = await proxy.inference.CreateChatCompletion(
        inference_pb2.CreateChatCompletionRequest(params=chat(model)),
        timeout=60,
        metadata=metadata,
    )
    assert response.choices[0].finish_reason in ("stop", "length")
    return response.choices[0].message.content


async def test_cold_start_then_warm_hits(fleet: Workers, proxies: list[Proxy]) -> None:
    proxy = await start_proxy(fleet, f"--model=cold-a={fleet.model_dir}")
    proxies.append(proxy)
    listed = await proxy.inference.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    assert [(m.id, m.warm_status) for m in listed.data] == [("cold-a", "cold")]

    await complete(proxy, "cold-a")
    assert loads("cold-a") == 1
    assert counter("helios_proxy_cold_starts_total", model="cold-a") == 1
    for _ in range(3):
        await complete(proxy, "cold-a")
    assert loads("cold-a") == 1  # warm hits: no further load
    listed = await proxy.inference.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    (model,) = listed.data
    assert (model.warm_status, model.ready_replicas) == ("warm", 1)
    assert (model.memory_bytes, model.memory_source) == (fleet.model_bytes, "weights")


async def test_concurrent_cold_requests_trigger_one_load(
    fleet: Workers, proxies: list[Proxy]
) -> None:
    proxy = await start_proxy(fleet, f"--model=burst={fleet.model_dir}")
    proxies.append(proxy)
    texts = await asyncio.gather(*(complete(proxy, "burst") for _ in range(8)))
    assert len(texts) == 8 and len(set(texts)) == 1  # greedy: same answer everywhere
    assert loads("burst") == 1
    assert len(proxy.holders("burst")) == 1


async def test_two_models_that_exceed_one_agent_land_apart(
    fleet: Workers, proxies: list[Proxy]
) -> None:
    proxy = await start_proxy(
        fleet, f"--model=pair-a={fleet.model_dir}", f"--model=pair-b={fleet.model_dir}"
    )
    proxies.append(proxy)
    await complete(proxy, "pair-a")
    await complete(proxy, "pair-b")
    (a,) = proxy.holders("pair-a")
    (b,) = proxy.holders("pair-b")
    assert a != b
    stats = await proxy.admin.GetMemoryStats(admin_pb2.GetMemoryStatsRequest(), timeout=10)
    for worker in stats.workers:
        assert worker.total_bytes == fleet.capacity
        assert worker.memory_source == "configured"
        assert worker.free_bytes >= 0
    by_address = {w.address: w for w in stats.workers}
    assert list(by_address[a].models) == ["pair-a"]
    assert list(by_address[b].models) == ["pair-b"]


async def test_model_bigger_than_every_agent_is_refused(
    fleet: Workers, proxies: list[Proxy]
) -> None:
    proxy = await start_proxy(fleet, f"--model=huge={fleet.huge_dir}")
    proxies.append(proxy)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await complete(proxy, "huge")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the largest worker has" in (caught.value.details() or "")
    assert loads("huge") == 0
    with pytest.raises(grpc.aio.AioRpcError) as preload:
        await proxy.admin.PreloadModel(
            admin_pb2.PreloadModelRequest(model_id="huge", replicas=1), timeout=10
        )
    assert preload.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_worker_killed_mid_stream(fleet: Workers, proxies: list[Proxy]) -> None:
    proxy = await start_proxy(fleet, f"--model=kill-mid={fleet.model_dir}")
    proxies.append(proxy)
    await complete(proxy, "kill-mid")
    (victim,) = proxy.holders("kill-mid")
    index = fleet.addresses().index(victim)
    params = chat("kill-mid", max_tokens=1500, ignore_eos=True)
    call = proxy.inference.StreamChatCompletion(
        inference_pb2.StreamChatCompletionRequest(params=params), timeout=60
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _chunk in call:
            process = fleet.processes[index].process
            if process is not None and process.returncode is None:
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not proxy.router.pool.view(victim).healthy
    # The next request goes elsewhere (a cold load on another agent).
    await complete(proxy, "kill-mid")
    (survivor,) = proxy.holders("kill-mid")
    assert survivor != victim


async def test_rest_stream_gets_an_error_event_when_the_worker_dies(
    fleet: Workers, proxies: list[Proxy]
) -> None:
    proxy = await start_proxy(fleet, f"--model=kill-rest={fleet.model_dir}")
    proxies.append(proxy)
    await complete(proxy, "kill-rest")
    (victim,) = proxy.holders("kill-rest")
    index = fleet.addresses().index(victim)
    call = proxy.inference.StreamChatCompletion(
        inference_pb2.StreamChatCompletionRequest(
            params=chat("kill-rest", max_tokens=1500, ignore_eos=True)
        ),
        timeout=60,
        metadata=(("x-helios-edge", "rest"),),
    )
    chunks = []
    async for chunk in call:
        chunks.append(chunk)
        process = fleet.processes[index].process
        if process is not None and process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
    assert chunks[-1].HasField("error")
    assert chunks[-1].error.code == "UNAVAILABLE"


async def test_scale_to_zero_after_idle_ttl_then_cold_again(
    fleet: Workers, proxies: list[Proxy]
) -> None:
    proxy = await start_proxy(fleet, f"--model=ttl={fleet.model_dir}", "--idle-ttl", "1")
    proxies.append(proxy)
    await complete(proxy, "ttl")
    assert len(proxy.holders("ttl")) == 1
    for _ in range(100):
        if counter("helios_proxy_model_unloads_total", model="ttl", reason="idle_ttl"):
            break
        await asyncio.sleep(0.1)
    assert counter("helios_proxy_model_unloads_total", model="ttl", reason="idle_ttl") == 1
    assert proxy.holders("ttl") == []
    await complete(proxy, "ttl")
    assert counter("helios_proxy_cold_starts_total", model="ttl") == 2


async def test_api_keys_and_rate_limit(fleet: Workers, proxies: list[Proxy]) -> None:
    proxy = await start_proxy(fleet, f"--model=limited={fleet.model_dir}", "--api-key=k1:2")
    proxies.append(proxy)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await complete(proxy, "limited")
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key = (("authorization", "Bearer k1"),)
    await complete(proxy, "limited", key)
    await complete(proxy, "limited", key)
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await complete(proxy, "limited", key)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = dict(limited.value.trailing_metadata() or ())["retry-after"]
    assert int(retry_after) >= 1


async def test_admin_evict_and_health(fleet: Workers, proxies: list[Proxy]) -> None:
    proxy = await start_proxy(fleet, f"--model=admin={fleet.model_dir}")
    proxies.append(proxy)
    preloaded = await proxy.admin.PreloadModel(
        admin_pb2.PreloadModelRequest(model_id="admin", replicas=2), timeout=60
    )
    assert len(preloaded.workers) == 2
    health = await proxy.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=10)
    assert (health.status, health.total_workers) == ("ok", WORKERS)
    assert 0 < health.memory_pressure < 1
    text = await fetch_status(proxy.server.address, 10)
    for worker in preloaded.workers:
        assert worker in text
    assert text.count("admin:ready") == 2 and "mesh: ok" in text
    assert "LAST LOAD" in text  # empty here: this proxy keeps no status reporter
    evicted = await proxy.admin.EvictModel(
        admin_pb2.EvictModelRequest(model_id="admin"), timeout=60
    )
    assert sorted(evicted.workers) == sorted(preloaded.workers)
    assert proxy.holders("admin") == []
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await proxy.admin.EvictModel(admin_pb2.EvictModelRequest(model_id="nope"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
