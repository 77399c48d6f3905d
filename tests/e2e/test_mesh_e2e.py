"""End to end: the official openai client -> Envoy -> proxy -> worker, real processes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
from support.mesh_harness import Mesh
from transformers import AutoTokenizer

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Tell me about the sun."}]


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(mesh: Mesh) -> Any:
    return AutoTokenizer.from_pretrained(mesh.model_dir)


def chat_prompt_tokens(tokenizer: Any) -> int:
    encoded = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    return len(encoded["input_ids"])


def test_up_prints_the_addresses(mesh: Mesh) -> None:
    printed = mesh.output.read_text()
    assert f"OpenAI REST base URL: {mesh.rest_url}" in printed
    assert mesh.grpc_address in printed


def test_streamed_chat_completion(client: openai.OpenAI, mesh: Mesh) -> None:
    stream = client.chat.completions.create(
        model=mesh.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 5
    assert all(isinstance(c.created, int) and c.created > 1_600_000_000 for c in chunks)
    assert all(isinstance(c.choices[0].index, int) for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_with_usage_chunk(client: openai.OpenAI, mesh: Mesh, tokenizer: Any) -> None:
    stream = client.chat.completions.create(
        model=mesh.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        max_tokens=8,
        temperature=0,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    expected_prompt = chat_prompt_tokens(tokenizer)
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected_prompt, 8)


def test_chat_completion_and_usage(client: openai.OpenAI, mesh: Mesh, tokenizer: Any) -> None:
    completion = client.chat.completions.create(
        model=mesh.model,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.object == "chat.completion"
    assert isinstance(completion.created, int)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == chat_prompt_tokens(tokenizer)
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Greedy is deterministic: the same request gives the same text.
    again = client.chat.completions.create(
        model=mesh.model,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert again.choices[0].message.content == choice.message.content


def test_completion_and_streamed_completion(
    client: openai.OpenAI, mesh: Mesh, tokenizer: Any
) -> None:
    prompt = "The sun is a star"
    completion = client.completions.create(
        model=mesh.model,
        prompt=prompt,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
    assert completion.usage.completion_tokens == 10
    streamed = list(
        client.completions.create(
            model=mesh.model,
            prompt=prompt,
            max_tokens=10,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_models_lists_the_default_model(client: openai.OpenAI, mesh: Mesh) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert mesh.model in ids


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _assert_openai_error(body: dict[str, Any]) -> None:
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error


def test_unknown_model_is_404(client: openai.OpenAI, mesh: Mesh) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    body = info.value.response.json()
    _assert_openai_error(body)
    assert "no-such-model" in body["error"]["message"]
    # And for a streamed request, before any chunk.
    with pytest.raises(openai.NotFoundError):
        list(
            client.chat.completions.create(
                model="no-such-model",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
        )


def test_malformed_json_is_400(mesh: Mesh) -> None:
    status, body = _post(f"{mesh.rest_url}/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400
    _assert_openai_error(body)


def test_max_tokens_below_one_is_400(client: openai.OpenAI, mesh: Mesh) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=mesh.model, messages=MESSAGES, max_tokens=0)  # type: ignore[arg-type]
    body = info.value.response.json()
    _assert_openai_error(body)
    assert "max_tokens" in body["error"]["message"]


async def test_native_grpc_status_codes(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        unknown = inference_pb2.CreateChatCompletionRequest(
            params=inference_pb2.ChatCompletionParams(
                model="no-such-model",
                messages=[inference_pb2.ChatMessage(role="user", content={"string_value": "hi"})],  # type: ignore[dict-item]
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(unknown)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        bad = inference_pb2.CreateChatCompletionRequest()
        bad.CopyFrom(unknown)
        bad.params.model = mesh.model
        bad.params.max_tokens = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        good = inference_pb2.StreamChatCompletionRequest()
        good.params.CopyFrom(bad.params)
        good.params.max_tokens = 4
        chunks = [c async for c in stub.StreamChatCompletion(good)]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")


async def _worker_stats(
    stub: worker_pb2_grpc.WorkerServiceStub, model: str
) -> worker_pb2.LoadedModel:
    beat = await stub.Heartbeat(worker_pb2.HeartbeatRequest())
    return next(m for m in beat.models if m.model == model)


async def test_client_disconnect_stops_generation_on_the_worker(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.service_address("worker-0")) as channel:
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        before = await _worker_stats(worker, mesh.model)
        async_client = openai.AsyncOpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0)
        stream = await async_client.chat.completions.create(
            model=mesh.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=1800,
            extra_body={"ignore_eos": True},
        )
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        running = await _worker_stats(worker, mesh.model)
        assert running.running_requests == 1
        await stream.close()  # the client goes away mid-stream
        await async_client.close()
        deadline = time.monotonic() + 10
        while (stats := await _worker_stats(worker, mesh.model)).running_requests:
            assert time.monotonic() < deadline, "the worker kept generating"
            await asyncio.sleep(0.05)
        assert stats.aborted_requests_total == before.aborted_requests_total + 1
        produced = stats.generated_tokens_total - before.generated_tokens_total
        assert produced < 1800
        await asyncio.sleep(0.3)
        after = await _worker_stats(worker, mesh.model)
        assert after.generated_tokens_total == stats.generated_tokens_total


async def test_reflection_through_envoy_lists_every_service(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    expected = {
        f"helios.v1.{name}"
        for name in (
            "InferenceService",
            "WorkerService",
            "EstimatorService",
            "RegistryService",
            "StorageService",
            "AdminService",
        )
    }
    assert expected <= names


async def test_internal_services_answer_on_their_own_ports(mesh: Mesh) -> None:
    """Internal services are off the front door but serve the mesh on their own ports."""
    from helios.v1 import storage_pb2, storage_pb2_grpc

    async with grpc.aio.insecure_channel(mesh.service_address("worker-0")) as channel:
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        beat = await worker.Heartbeat(worker_pb2.HeartbeatRequest())
        assert beat.worker_id == "worker-0"
    async with grpc.aio.insecure_channel(mesh.service_address("storaged")) as channel:
        storage = storage_pb2_grpc.StorageServiceStub(channel)
        stats = await storage.GetStats(storage_pb2.GetStatsRequest())
        assert {t.tier for t in stats.tiers} == {
            storage_pb2.CACHE_TIER_RAM,
            storage_pb2.CACHE_TIER_SSD,
        }


async def test_served_model_came_through_registry_and_storaged(mesh: Mesh) -> None:
    """`helios up` imports the model into the registry and serves it by its registry id:
    storaged fetched the version, the worker loaded it from storaged's directory."""
    from helios.v1 import registry_pb2, registry_pb2_grpc, storage_pb2, storage_pb2_grpc

    assert mesh.model == "helios/helios-tiny-chat"
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        resolved = await registry.ResolveModel(
            registry_pb2.ResolveModelRequest(reference=mesh.model)
        )
        assert resolved.version.model_id == mesh.model
        manifest = await registry.GetManifest(
            registry_pb2.GetManifestRequest(version=resolved.version)
        )
        source = {p.name: p.read_bytes() for p in mesh.model_dir.iterdir() if p.is_file()}
        assert {f.path for f in manifest.files} <= source.keys()

    # Storage and workers are internal: asked on their own ports, not the front door.
    async with grpc.aio.insecure_channel(mesh.service_address("storaged")) as channel:
        storage = storage_pb2_grpc.StorageServiceStub(channel)
        stat = await storage.Stat(storage_pb2.StatRequest(model_id=mesh.model))
        assert stat.tier in (storage_pb2.CACHE_TIER_RAM, storage_pb2.CACHE_TIER_SSD)
        cached = Path(stat.local_dir)
        for file in manifest.files:
            assert (cached / file.path).read_bytes() == source[file.path]
    async with grpc.aio.insecure_channel(mesh.service_address("worker-0")) as channel:
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        served = await _worker_stats(worker, mesh.model)
        assert served.state == worker_pb2.MODEL_STATE_READY
        # Loading it again is a no-op: the model is already serving.
        steps = [
            s.state async for s in worker.LoadModel(worker_pb2.LoadModelRequest(model=mesh.model))
        ]
        assert steps == [worker_pb2.MODEL_STATE_READY]


@pytest.mark.parametrize(
    ("service", "name"),
    [
        ("proxy", "helios.v1.InferenceService"),
        ("worker-0", "helios.v1.WorkerService"),
        ("estimator", "helios.v1.EstimatorService"),
        ("registry", "helios.v1.RegistryService"),
        ("storaged", "helios.v1.StorageService"),
    ],
)
async def test_health_serving_for_each_service(mesh: Mesh, service: str, name: str) -> None:
    async with grpc.aio.insecure_channel(mesh.service_address(service)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for checked in (name, ""):
            response = await health.Check(health_pb2.HealthCheckRequest(service=checked))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def _metrics(mesh: Mesh) -> str:
    request = urllib.request.Request(f"{mesh.rest_url}/metrics", headers=mesh.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def test_admin_and_internal_paths_are_closed_without_the_admin_key(mesh: Mesh) -> None:
    """Issue 16's holes, through the mesh `helios up` runs: the admin API and metrics need
    the admin key; internal services are not on the front door at all."""
    for path, method in (
        ("/metrics", "GET"),
        ("/admin/memory-stats", "GET"),
        ("/admin/evict/x", "DELETE"),
    ):
        request = urllib.request.Request(f"{mesh.rest_url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    request = urllib.request.Request(
        f"{mesh.rest_url}/admin/memory-stats", headers=mesh.admin_headers()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def test_internal_services_are_not_on_the_front_door(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await worker.Heartbeat(worker_pb2.HeartbeatRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_through_envoy(mesh: Mesh) -> None:
    text = _metrics(mesh)
    assert "helios_grpc_server_handled_total" in text
    assert "helios_proxy_time_to_first_token_seconds" in text


def test_unknown_model_names_do_not_become_metric_labels(client: openai.OpenAI, mesh: Mesh) -> None:
    name = f"typo-{uuid.uuid4().hex[:12]}"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=name, prompt="hi", max_tokens=1)
    client.completions.create(model=mesh.model, prompt="hi", max_tokens=1)
    text = _metrics(mesh)
    assert name not in text
    assert 'helios_proxy_requests_total{model="_unknown",outcome="error"}' in text
    assert f'helios_proxy_requests_total{{model="{mesh.model}",outcome="finished"}}' in text


def test_estimate_memory_through_envoy(mesh: Mesh) -> None:
    """The estimator's REST shape that outside tests rely on."""
    config = json.loads((mesh.model_dir / "config.json").read_text())
    body = {
        "config": config,
        "dtype": "bf16",
        "batch_size": 1,
        "max_seq_len": 4096,
        "mode": "inference",
    }
    status, answer = _post(f"{mesh.rest_url}/estimate/memory", json.dumps(body).encode())
    assert status == 200, answer
    parameters = int(answer["parameter_count"])
    assert int(answer["weights_bytes"]) == 2 * parameters  # bf16
    per_token = int(answer["kv_cache_bytes_per_token"])
    layers, kv_heads = config["num_hidden_layers"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert per_token == 2 * layers * kv_heads * head_dim * 2
    assert int(answer["kv_cache_bytes"]) == per_token * 4096
    assert int(answer["total_bytes"]) > int(answer["weights_bytes"]) + int(answer["kv_cache_bytes"])
    status, answer = _post(
        f"{mesh.rest_url}/estimate/memory", json.dumps({**body, "batch_size": -3}).encode()
    )
    assert status == 400
    _assert_openai_error(answer)
    assert "batch_size" in answer["error"]["message"]
