"""Disaggregated serving end to end: a prefill worker and a decode worker, each its own
process (`--role prefill`, `--role decode`, the reference engine on the tiny model), and
the proxy (in this process, on a real gRPC port) that finds their roles in their
heartbeats and runs Prefill on one and Decode on the other. A third process, a `both`
worker behind its own proxy, gives the single-worker answer to compare with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as wpb

from cli.processes import ServiceProcess
from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from proxy.control import ControlPlane
from proxy.fleet import WorkerPool, WorkerRole
from proxy.servicer import InferenceServicer
from proxy.worker_client import GrpcWorkerConnection
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = DEFAULT_MODEL_NAME


@dataclass
class Workers:
    prefill: ServiceProcess
    decode: ServiceProcess
    both: ServiceProcess


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def workers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Workers]:
    root = tmp_path_factory.mktemp("disagg-mesh")
    model_dir = await asyncio.to_thread(build_tiny_model, root / MODEL)
    processes = [
        ServiceProcess(
            name=f"worker-{role}",
            module="worker.server",
            args=["--worker-id", role, "--role", role, "--model", f"{MODEL}={model_dir}"],
            state_dir=root,
        )
        for role in ("prefill", "decode", "both")
    ]
    await asyncio.gather(*(p.start() for p in processes))
    try:
        await asyncio.gather(*(p.wait_ready(120) for p in processes))
        yield Workers(*processes)
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


async def start_proxy(*workers: ServiceProcess) -> Proxy:
    router = ControlPlane.create(WorkerPool([w.address for w in workers]), GrpcWorkerConnection)
    router.start()  # roles and READY models come from the heartbeat loop
    servicer = InferenceServicer(router.serving)

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return ["helios.v1.InferenceService"]

    server = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
    return Proxy(router, server, grpc.aio.insecure_channel(server.address))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxies(workers: Workers) -> AsyncIterator[tuple[Proxy, Proxy]]:
    split = await start_proxy(workers.prefill, workers.decode)
    single = await start_proxy(workers.both)
    deadline = time.monotonic() + 30
    while split.router.pool.pick_disaggregated(MODEL) is None or not single.router.pool.candidates(
        MODEL
    ):
        assert time.monotonic() < deadline, "the proxies never saw the workers READY"
        await asyncio.sleep(0.1)
    yield split, single
    for proxy in (split, single):
        await proxy.channel.close(None)
        await proxy.server.stop(0)
        await proxy.router.stop()


async def model_stats(worker: ServiceProcess) -> wpb.LoadedModel:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        beat = await worker_pb2_grpc.WorkerServiceStub(channel).Heartbeat(
            wpb.HeartbeatRequest(), timeout=10
        )
    return next(m for m in beat.models if m.model == MODEL)


def chat(max_tokens: int, *, ignore_eos: bool = False) -> inference_pb2.ChatCompletionParams:
    return inference_pb2.ChatCompletionParams(
        model=MODEL,
        messages=[
            inference_pb2.ChatMessage(
                role="user", content=struct_pb2.Value(string_value="Tell me about the sea")
            )
        ],
        max_tokens=max_tokens,
        temperature=0,
        ignore_eos=ignore_eos,
    )


async def test_split_chat_equals_one_worker_and_each_did_its_phase(
    workers: Workers, proxies: tuple[Proxy, Proxy]
) -> None:
    split, single = proxies
    assert split.router.pool.view(workers.prefill.address).role is WorkerRole.PREFILL
    assert split.router.pool.view(workers.decode.address).role is WorkerRole.DECODE
    prefill_before = (await model_stats(workers.prefill)).generated_tokens_total
    decode_before = (await model_stats(workers.decode)).generated_tokens_total

    params = chat(32)
    expected = await single.inference.CreateChatCompletion(
        inference_pb2.CreateChatCompletionRequest(params=params), timeout=60
    )
    got = await split.inference.CreateChatCompletion(
        inference_pb2.CreateChatCompletionRequest(params=params), timeout=60
    )
    text = got.choices[0].message.content
    assert len(set(text)) > 3, text  # a real generation, not a token repeated
    assert text == expected.choices[0].message.content
    assert got.choices[0].finish_reason == expected.choices[0].finish_reason
    assert got.usage.completion_tokens == expected.usage.completion_tokens
    assert got.usage.prompt_tokens == expected.usage.prompt_tokens

    # Streaming: Prefill's first token comes first, then Decode's, adding up to the same.
    stream_params = chat(32)
    stream_params.stream = True
    chunks = [
        c
        async for c in split.inference.StreamChatCompletion(
            inference_pb2.StreamChatCompletionRequest(params=stream_params), timeout=60
        )
    ]
    assert not any(c.HasField("error") for c in chunks)
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == text

    # Each worker did its own phase only: one token per request on the prefill worker,
    # the rest on the decode worker.
    prefill_made = (await model_stats(workers.prefill)).generated_tokens_total - prefill_before
    decode_made = (await model_stats(workers.decode)).generated_tokens_total - decode_before
    assert prefill_made == 2
    assert decode_made == 2 * (got.usage.completion_tokens - 1)


async def test_client_cancel_mid_decode_stops_the_decode_worker(
    workers: Workers, proxies: tuple[Proxy, Proxy]
) -> None:
    split, _ = proxies
    before = await model_stats(workers.decode)
    params = chat(1500, ignore_eos=True)
    params.stream = True
    call = split.inference.StreamChatCompletion(
        inference_pb2.StreamChatCompletionRequest(params=params), timeout=60
    )
    received = 0
    async for _ in call:
        received += 1
        if received == 5:  # the first token (prefill) and four decode steps
            break
    call.cancel()
    deadline = time.monotonic() + 15
    while True:
        stats = await model_stats(workers.decode)
        if stats.running_requests == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert stats.running_requests == 0
    assert stats.aborted_requests_total == before.aborted_requests_total + 1
    made = stats.generated_tokens_total - before.generated_tokens_total
    assert made < 1499  # stopped long before max_tokens
    await asyncio.sleep(0.5)
    assert (
        await model_stats(workers.decode)
    ).generated_tokens_total == stats.generated_tokens_total
    assert all(a.outstanding == 0 for a in split.router.pool.agents())
