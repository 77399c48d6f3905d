"""The worker's InferenceService with the real tiny model (transformers reference engine)
over real gRPC, and the same requests through the proxy's relay: both paths answer alike
(same text, finish reason and usage for the same greedy request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as worker_pb
from support.fakes import serve, serve_worker_inference

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from proxy.control import ControlPlane
from proxy.fleet import WorkerPool
from proxy.servicer import InferenceServicer as ProxyInferenceServicer
from proxy.worker_client import GrpcWorkerConnection
from worker.models import ModelManager
from worker.server import transformers_engine_factory

MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same path as the engine tests use: the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@dataclass
class Paths:
    """The worker's own InferenceService and the proxy's in front of the same worker."""

    direct: inference_pb2_grpc.InferenceServiceStub
    proxied: inference_pb2_grpc.InferenceServiceStub
    control: worker_pb2_grpc.WorkerServiceStub


@pytest_asyncio.fixture
async def paths(tiny_model_dir: Path) -> AsyncIterator[Paths]:
    manager = ModelManager(
        transformers_engine_factory(max_concurrency=2),
        engine_kind="transformers",
        capacity_bytes=1 << 30,
    )
    async for _ in manager.load(MODEL, tiny_model_dir):
        continue
    worker = await serve_worker_inference(manager)
    router = ControlPlane.create(WorkerPool([worker.address]), GrpcWorkerConnection)
    await router.refresh()
    proxy = await serve(
        "InferenceService",
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
        ProxyInferenceServicer(router.serving),
    )
    try:
        async with (
            grpc.aio.insecure_channel(worker.address) as worker_channel,
            grpc.aio.insecure_channel(proxy.address) as proxy_channel,
        ):
            yield Paths(
                inference_pb2_grpc.InferenceServiceStub(worker_channel),
                inference_pb2_grpc.InferenceServiceStub(proxy_channel),
                worker_pb2_grpc.WorkerServiceStub(worker_channel),
            )
    finally:
        await proxy.stop(0)
        await router.stop()
        await worker.stop(0)
        await manager.shutdown()


def chat(max_tokens: int, **fields: object) -> pb.ChatCompletionParams:
    params = pb.ChatCompletionParams(model=MODEL, max_tokens=max_tokens, temperature=0.0)
    params.messages.add(role="system").content.string_value = "You are terse."
    params.messages.add(role="user").content.string_value = "What is the capital of France?"
    if "stop" in fields:
        params.stop.string_value = str(fields.pop("stop"))
    params.stream_options.include_usage = bool(fields.pop("include_usage", False))
    for name, value in fields.items():
        setattr(params, name, value)
    return params


def completion(max_tokens: int, **fields: object) -> pb.CompletionParams:
    params = pb.CompletionParams(model=MODEL, max_tokens=max_tokens, temperature=0.0)
    params.prompt.string_value = "Once upon a time"
    for name, value in fields.items():
        setattr(params, name, value)
    return params


def usage(message: pb.CreateChatCompletionResponse | pb.CreateCompletionResponse) -> tuple:
    u = message.usage
    return (u.prompt_tokens, u.completion_tokens, u.total_tokens)


async def test_chat_direct_and_through_the_proxy_answer_alike(paths: Paths) -> None:
    request = pb.CreateChatCompletionRequest(params=chat(max_tokens=12, ignore_eos=True))
    direct = await paths.direct.CreateChatCompletion(request)
    proxied = await paths.proxied.CreateChatCompletion(request)
    assert direct.choices[0].message.content  # the tiny model says something
    assert direct.choices[0].message.content == proxied.choices[0].message.content
    assert direct.choices[0].finish_reason == proxied.choices[0].finish_reason == "length"
    assert usage(direct) == usage(proxied)
    assert direct.usage.completion_tokens == 12

    streamed = pb.StreamChatCompletionRequest(
        params=chat(max_tokens=12, ignore_eos=True, include_usage=True)
    )
    for stub in (paths.direct, paths.proxied):
        chunks = [c async for c in stub.StreamChatCompletion(streamed)]
        text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
        assert text == direct.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
            direct.usage.prompt_tokens,
            12,
        )


async def test_completion_direct_and_through_the_proxy_answer_alike(paths: Paths) -> None:
    request = pb.CreateCompletionRequest(params=completion(max_tokens=6, ignore_eos=True))
    direct = await paths.direct.CreateCompletion(request)
    proxied = await paths.proxied.CreateCompletion(request)
    assert direct.choices[0].text == proxied.choices[0].text
    assert direct.choices[0].finish_reason == proxied.choices[0].finish_reason == "length"
    assert usage(direct) == usage(proxied)
    chunks = [
        c
        async for c in paths.direct.StreamCompletion(
            pb.StreamCompletionRequest(params=completion(max_tokens=6, ignore_eos=True))
        )
    ]
    assert "".join(c.choices[0].text for c in chunks) == direct.choices[0].text


async def test_stop_string_ends_the_answer_before_it(paths: Paths) -> None:
    whole = await paths.direct.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=chat(max_tokens=16, ignore_eos=True))
    )
    text = whole.choices[0].message.content
    stop = text[4:7]
    assert len(stop) == 3, text
    request = pb.CreateChatCompletionRequest(params=chat(max_tokens=16, ignore_eos=True, stop=stop))
    direct = await paths.direct.CreateChatCompletion(request)
    proxied = await paths.proxied.CreateChatCompletion(request)
    assert direct.choices[0].message.content == text[: text.find(stop)]
    assert direct.choices[0].finish_reason == "stop"
    assert (direct.choices[0].message.content, usage(direct)) == (
        proxied.choices[0].message.content,
        usage(proxied),
    )


async def test_heartbeat_counts_the_direct_requests_only(paths: Paths) -> None:
    request = pb.CreateCompletionRequest(params=completion(max_tokens=3, ignore_eos=True))
    direct = await paths.direct.CreateCompletion(request)
    await paths.proxied.CreateCompletion(request)  # relayed: Generate, the proxy's to count
    beat = await paths.control.Heartbeat(worker_pb.HeartbeatRequest())
    [served] = beat.models
    assert served.requests_total == 1
    assert served.prompt_tokens_total == direct.usage.prompt_tokens
    assert served.completion_tokens_total == 3
    assert served.last_request_unix_ms > 0
