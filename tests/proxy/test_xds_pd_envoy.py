"""Disaggregated serving through a real Envoy with no proxy in the path (e2e): a prefill
worker and a decode worker, each its own process (`--role prefill`, `--role decode`, the
reference engine on the tiny model); the proxy's control plane (heartbeats, xDS, the cold
path behind Envoy's base routes) in this process on a real gRPC port. Envoy routes the
model to the decode worker, which runs the prefill on the prefill worker the heartbeat
named: the proxy relays none of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from helios.v1 import inference_pb2 as ipb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as wpb
from prometheus_client import REGISTRY
from xds_envoy import start_envoy, until, write_base_routes

from cli.envoy import EnvoyProcess
from cli.processes import ServiceProcess
from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from proxy.control import ControlPlane
from proxy.fleet import WorkerPool
from proxy.servicer import InferenceServicer
from proxy.worker_client import GrpcWorkerConnection
from proxy.xds_resources import MODEL_HEADER, XdsSettings, load_base_routes
from proxy.xds_server import XdsServer
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = DEFAULT_MODEL_NAME


@dataclass
class Edge:
    prefill: ServiceProcess
    decode: ServiceProcess
    control: ControlPlane
    proxy: RunningServer
    envoy: EnvoyProcess
    channel: grpc.aio.Channel

    @property
    def through_envoy(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    root = tmp_path_factory.mktemp("pd-edge")
    model_dir = await asyncio.to_thread(build_tiny_model, root / MODEL)
    workers = [
        ServiceProcess(
            name=f"worker-{role}",
            module="worker.server",
            args=["--worker-id", role, "--role", role, "--model", f"{MODEL}={model_dir}"],
            state_dir=root,
        )
        for role in ("prefill", "decode")
    ]
    await asyncio.gather(*(w.start() for w in workers))
    try:
        await asyncio.gather(*(w.wait_ready(120) for w in workers))
        control = ControlPlane.create(
            WorkerPool([w.address for w in workers]), GrpcWorkerConnection
        )
        xds = XdsServer(
            control.pool,
            XdsSettings(base_routes=load_base_routes(write_base_routes(root / "routes.json"))),
        )
        cold_path = InferenceServicer(control.serving)

        def register(server: grpc.aio.Server) -> list[str]:
            # As the proxy process serves them: ADS and the cold path on one port.
            inference_pb2_grpc.add_InferenceServiceServicer_to_server(cold_path, server)
            return ["helios.v1.InferenceService", xds.register(server)]

        proxy = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
        control.start()
        xds.start()
        envoy = await start_envoy(root / "envoy", proxy.port, proxy.port)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}")
        try:
            yield Edge(*workers, control, proxy, envoy, channel)
        finally:
            await channel.close()
            await envoy.stop()
            await xds.stop()
            await control.stop()
            await proxy.stop(None)
    finally:
        await asyncio.gather(*(w.stop(5) for w in workers))


async def stats(worker: ServiceProcess) -> wpb.LoadedModel:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        beat = await worker_pb2_grpc.WorkerServiceStub(channel).Heartbeat(
            wpb.HeartbeatRequest(), timeout=10
        )
    return next(m for m in beat.models if m.model == MODEL)


def relayed() -> float:
    """Requests the proxy served itself (its cold path), whatever their outcome."""
    return sum(
        REGISTRY.get_sample_value("helios_proxy_requests_total", {"model": MODEL, "outcome": o})
        or 0.0
        for o in ("finished", "error", "cancelled")
    )


def chat(max_tokens: int) -> ipb.ChatCompletionParams:
    params = ipb.ChatCompletionParams(model=MODEL, max_tokens=max_tokens, temperature=0.0)
    params.messages.add(role="user").content.string_value = "Tell me about the sea"
    return params


async def test_warm_requests_go_envoy_to_the_decode_worker_not_through_the_proxy(
    edge: Edge,
) -> None:
    metadata = ((MODEL_HEADER, MODEL),)
    request = ipb.CreateChatCompletionRequest(params=chat(24))

    async def decode_worker_answers() -> bool:
        # Until the model's route and the decode worker's prefill pool are there, Envoy
        # sends the request to the proxy's cold path (or the decode worker refuses it).
        before = (await stats(edge.decode)).requests_total
        try:
            await edge.through_envoy.CreateChatCompletion(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError:
            return False
        return (await stats(edge.decode)).requests_total == before + 1

    await until(decode_worker_answers, within=30, every=0.2)

    # The same greedy request, disaggregated by the proxy (its cold path, called directly),
    # gives the answer to compare with.
    async with grpc.aio.insecure_channel(edge.proxy.address) as channel:
        expected = await inference_pb2_grpc.InferenceServiceStub(channel).CreateChatCompletion(
            request, timeout=60
        )

    relayed_before = relayed()
    prefill_before, decode_before = await stats(edge.prefill), await stats(edge.decode)
    got = await edge.through_envoy.CreateChatCompletion(request, metadata=metadata, timeout=60)
    streamed = [
        c
        async for c in edge.through_envoy.StreamChatCompletion(
            ipb.StreamChatCompletionRequest(params=chat(24)), metadata=metadata, timeout=60
        )
    ]
    text = got.choices[0].message.content
    assert len(set(text)) > 3, text
    assert text == expected.choices[0].message.content
    assert got.usage == expected.usage
    assert not any(c.HasField("error") for c in streamed)
    assert "".join(c.choices[0].delta.content for c in streamed if c.choices) == text

    # The proxy relayed nothing; the decode worker served both requests, each prefilled
    # (one token) on the prefill worker.
    assert relayed() == relayed_before
    prefill_after, decode_after = await stats(edge.prefill), await stats(edge.decode)
    assert decode_after.requests_total == decode_before.requests_total + 2
    assert prefill_after.generated_tokens_total == prefill_before.generated_tokens_total + 2
    assert prefill_after.requests_total == prefill_before.requests_total
