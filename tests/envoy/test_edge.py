"""The REST edge end to end: the openai client and raw HTTP through a real Envoy to a fake."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import openai
import pytest
from envoy_fakes import (
    ADMIN_KEY,
    CREATED,
    HELIOS_SERVICES,
    METRICS_BODY,
    MODEL_ID,
    SLOW_PAUSE_S,
    STREAM_PIECES,
    Edge,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helios.v1 import inference_pb2, inference_pb2_grpc

from cli.envoy import EnvoyProcess
from edge import Upstream, render_envoy_config

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def post(
    edge: Edge, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        edge.base_url + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def get(
    edge: Edge, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(edge.base_url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def last_call(edge: Edge) -> tuple[str, dict[str, list[str]]]:
    method, metadata = edge.fake.calls[-1]
    values: dict[str, list[str]] = {}
    for key, value in metadata:
        values.setdefault(key, []).append(value if isinstance(value, str) else value.decode())
    return method, values


def assert_openai_error(body: bytes, *, type_: str, code: str | None) -> dict[str, Any]:
    data = json.loads(body)
    assert set(data) == {"error"}
    error = data["error"]
    assert {"message", "type", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    assert error["code"] == code
    return error


# ----------------------------------------------------------------------------- chat


def test_streamed_chat(edge: Edge, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=MESSAGES, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert len(chunks) == len(STREAM_PIECES) + 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(STREAM_PIECES)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * len(STREAM_PIECES)
    assert chunks[-1].choices[0].finish_reason == "stop"
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert isinstance(chunk.created, int) and chunk.created == CREATED
        assert isinstance(chunk.choices[0].index, int) and chunk.choices[0].index == 0
    method, metadata = last_call(edge)
    assert method == "StreamChatCompletionEvents"
    assert metadata["x-helios-edge"] == ["rest"]


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert isinstance(usage.total_tokens, int)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_ends_with_done(edge: Edge, include_usage: bool) -> None:
    body = {"model": MODEL_ID, "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, headers, raw = post(edge, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    last = json.loads(events[-3][len("data: ") :])
    if include_usage:
        assert "usage" in last
    else:
        assert last["choices"][0]["finish_reason"] == "stop"


def test_stream_is_not_buffered(client: openai.OpenAI) -> None:
    start = time.monotonic()
    arrivals = []
    for _ in client.chat.completions.create(model="slow-stream", messages=MESSAGES, stream=True):
        arrivals.append(time.monotonic() - start)
    assert len(arrivals) == len(STREAM_PIECES) + 1
    assert arrivals[0] < SLOW_PAUSE_S / 2
    assert arrivals[-1] >= SLOW_PAUSE_S


def test_chat_completion(edge: Edge, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert isinstance(completion.created, int) and completion.created == CREATED
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hi"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    for value in (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens):
        assert isinstance(value, int)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert last_call(edge)[0] == "CreateChatCompletion"


@pytest.mark.parametrize(
    "content",
    [
        '"stream": true',
        'say \\"stream\\": true, {"stream":true}',
        '{"stream" : true}',
    ],
)
def test_stream_detection_ignores_message_content(
    edge: Edge, client: openai.OpenAI, content: str
) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == f"echo: {content}"
    assert last_call(edge)[0] == "CreateChatCompletion"


@pytest.mark.parametrize(
    ("body", "method"),
    [
        (
            b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"stream":false}',
            "CreateChatCompletion",
        ),
        (
            b'{"model":"fake-model","stream_options":{"stream":true},"messages":[]}',
            "CreateChatCompletion",
        ),
        (
            b'{"model":"fake-model","messages":[{"role":"user","content":"\\"stream\\": true"}]}',
            "CreateChatCompletion",
        ),
        (
            b'{\n  "model": "fake-model",\n  "stream"\n  :\t true,\n  "messages": []\n}',
            "StreamChatCompletionEvents",
        ),
        (
            b'{"model":"fake-model","stream":"true","messages":[]}',
            "StreamChatCompletionEvents",
        ),
        (
            b'{"model":"fake-model","stream":null,"messages":[]}',
            "CreateChatCompletion",
        ),
        (
            b'{"messages":[{"role":"user","content":"}{\\\\"}],"stream":true,"model":"fake-model"}',
            "StreamChatCompletionEvents",
        ),
    ],
)
def test_stream_detection_raw(edge: Edge, body: bytes, method: str) -> None:
    status, headers, _ = post(edge, "/v1/chat/completions", body)
    assert status == 200
    assert last_call(edge)[0] == method
    streamed = headers["content-type"].startswith("text/event-stream")
    assert streamed == (method == "StreamChatCompletionEvents")


def test_large_prompt(client: openai.OpenAI) -> None:
    content = "x" * (3 * 1024 * 1024)  # beyond Envoy's default 1 MiB buffer limit
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == f"echo: {content}"


def test_unknown_query_parameters_are_ignored(edge: Edge) -> None:
    status, _, body = get(edge, "/v1/models?api-version=2024-06-01&foo=bar")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == MODEL_ID


def test_client_cannot_spoof_edge_header(edge: Edge) -> None:
    body = json.dumps({"model": MODEL_ID, "messages": MESSAGES}).encode()
    status, _, _ = post(edge, "/v1/chat/completions", body, {"x-helios-edge": "grpc"})
    assert status == 200
    assert last_call(edge)[1]["x-helios-edge"] == ["rest"]


def test_model_header_comes_from_the_body(edge: Edge) -> None:
    """The per-model routes match x-helios-model: for REST it is the body's model, never a
    client's header; x-helios-prefix-hash follows the prompt's first bytes."""
    body = json.dumps({"model": MODEL_ID, "messages": MESSAGES}).encode()
    status, _, _ = post(edge, "/v1/chat/completions", body, {"x-helios-model": "other"})
    assert status == 200
    metadata = last_call(edge)[1]
    assert metadata["x-helios-model"] == [MODEL_ID]
    first_hash = metadata["x-helios-prefix-hash"]
    assert len(first_hash) == 1 and len(first_hash[0]) == 8
    same = json.dumps({"messages": MESSAGES, "model": MODEL_ID, "max_tokens": 3}).encode()
    post(edge, "/v1/chat/completions", same)
    assert last_call(edge)[1]["x-helios-prefix-hash"] == first_hash
    other = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "yo"}]})
    post(edge, "/v1/chat/completions", other.encode())
    assert last_call(edge)[1]["x-helios-prefix-hash"] != first_hash


@pytest.mark.parametrize("model", ["fake\\u0041model", "x" * 300])
def test_model_header_is_not_set_for_odd_ids(edge: Edge, model: str) -> None:
    """Escaped or over-long ids take the default route (the proxy judges them)."""
    body = b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "hi"}]}'
    post(edge, "/v1/chat/completions", body, {"x-helios-model": MODEL_ID})
    assert "x-helios-model" not in last_call(edge)[1]


# ----------------------------------------------------------------------------- completions


def test_completion(edge: Edge, client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL_ID, prompt="once upon", max_tokens=5)
    assert completion.object == "text_completion"
    assert isinstance(completion.created, int)
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.text == " echo: once upon"
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert isinstance(completion.usage.completion_tokens, int)
    assert last_call(edge)[0] == "CreateCompletion"


def test_completion_stream_detection_ignores_prompt(edge: Edge, client: openai.OpenAI) -> None:
    prompt = '{"stream": true, "x": "\\"stream\\":true"}'
    completion = client.completions.create(model=MODEL_ID, prompt=prompt)
    assert completion.choices[0].text == f" echo: {prompt}"
    assert last_call(edge)[0] == "CreateCompletion"


def test_streamed_completion(edge: Edge, client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL_ID, prompt="hi", stream=True))
    assert len(chunks) == len(STREAM_PIECES) + 1
    assert "".join(c.choices[0].text for c in chunks) == "".join(STREAM_PIECES)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(isinstance(c.created, int) for c in chunks)
    assert last_call(edge)[0] == "StreamCompletionEvents"


def test_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL_ID]
    assert models[0].object == "model"
    assert models[0].owned_by == "helios"
    assert isinstance(models[0].created, int)


# ----------------------------------------------------------------------------- errors


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="missing", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 404
    assert error.code == "NOT_FOUND"
    assert error.type == "invalid_request_error"
    assert 'model "missing" not found' in error.message
    body = assert_openai_error(
        error.response.content, type_="invalid_request_error", code="NOT_FOUND"
    )
    assert body["message"] == 'model "missing" not found'
    assert error.response.headers["content-type"] == "application/json"


def test_unknown_model_streamed_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="missing", messages=MESSAGES, stream=True)
    assert caught.value.code == "NOT_FOUND"


def test_max_tokens_zero_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=0)
    assert caught.value.status_code == 400
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.endswith("max_tokens must be >= 1")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=0)


def test_malformed_json_is_bad_request(edge: Edge) -> None:
    status, headers, body = post(edge, "/v1/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert_openai_error(body, type_="invalid_request_error", code=None)


def test_unknown_path_is_not_found(edge: Edge) -> None:
    status, headers, body = get(edge, "/v1/no/such/thing")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert_openai_error(body, type_="invalid_request_error", code=None)


def test_midstream_failure_raises(edge: Edge, client: openai.OpenAI) -> None:
    received = []
    stream = client.chat.completions.create(model="fails-midstream", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == list(STREAM_PIECES[:2])
    assert caught.value.message == "worker lost mid-stream"
    assert caught.value.code == "UNAVAILABLE"
    assert last_call(edge)[1]["x-helios-edge"] == ["rest"]


def test_midstream_failure_completion_raises(client: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIError):
        for chunk in client.completions.create(model="fails-midstream", prompt="x", stream=True):
            received.append(chunk.choices[0].text)
    assert received == list(STREAM_PIECES[:2])


# ----------------------------------------------------------------------------- other routes


def test_metrics_need_the_admin_key(edge: Edge) -> None:
    assert get(edge, "/v1/metrics")[0] == 401
    assert get(edge, "/v1/metrics", {"Authorization": "Bearer nope"})[0] == 401


def test_metrics_are_proxied(edge: Edge) -> None:
    status, headers, body = get(edge, "/v1/metrics", {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200
    assert body == METRICS_BODY
    assert headers["content-type"].startswith("text/plain")


# ----------------------------------------------------------------------------- native gRPC


def test_native_grpc_through_envoy(edge: Edge) -> None:
    async def call() -> inference_pb2.ListModelsResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            return await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)

    response = edge.run(call())
    assert [m.id for m in response.data] == [MODEL_ID]
    method, metadata = last_call(edge)
    assert method == "ListModels"
    assert "x-helios-edge" not in metadata


def test_native_grpc_stream_failure_is_a_status(edge: Edge) -> None:
    """Without the REST marker (a spoofed one is dropped), a mid-stream failure is a status."""

    async def call() -> tuple[list[str], grpc.StatusCode]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.StreamChatCompletionRequest(
                params=inference_pb2.ChatCompletionParams(model="fails-midstream", stream=True)
            )
            pieces: list[str] = []
            try:
                async for chunk in stub.StreamChatCompletion(
                    request, timeout=10, metadata=(("x-helios-edge", "rest"),)
                ):
                    pieces.append(chunk.choices[0].delta.content)
            except grpc.aio.AioRpcError as error:
                return pieces, error.code()
            return pieces, grpc.StatusCode.OK

    pieces, code = edge.run(call())
    assert pieces == list(STREAM_PIECES[:2])
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "x-helios-edge" not in last_call(edge)[1]


def test_native_grpc_error_status(edge: Edge) -> None:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.CreateChatCompletionRequest(
                params=inference_pb2.ChatCompletionParams(model="missing")
            )
            try:
                await stub.CreateChatCompletion(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    assert edge.run(call()) == grpc.StatusCode.NOT_FOUND


def test_health_through_envoy(edge: Edge) -> None:
    async def call() -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            return response.status

    assert edge.run(call()) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_through_envoy(edge: Edge) -> None:
    async def call() -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
            names: list[str] = []
            async for response in responses:
                names.extend(s.name for s in response.list_services_response.service)
            return names

    names = edge.run(call())
    assert set(HELIOS_SERVICES) <= set(names)
    assert "helios.v1.InferenceService" in names
    assert "grpc.health.v1.Health" in names


def test_envoy_process_addresses(edge: Edge) -> None:
    assert edge.envoy.listen_host == "127.0.0.1"
    assert edge.envoy.listen_port > 0
    assert edge.envoy.admin_port > 0
    assert edge.envoy.admin_port != edge.envoy.listen_port
    with urllib.request.urlopen(
        f"http://{edge.envoy.admin_host}:{edge.envoy.admin_port}/ready", timeout=5
    ) as response:
        assert response.read().strip() == b"LIVE"


# ----------------------------------------------------------------------------- process control


def test_second_envoy_process(edge: Edge, tmp_path: Path) -> None:
    """A second Envoy in front of the same fake serves a stream whole (ending in
    ``[DONE]``); then it is stopped."""
    upstream = Upstream("inference", "127.0.0.1", edge.fake_port)
    config = render_envoy_config(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        descriptor_path=edge.descriptor,
        grpc_upstreams={"helios.v1.InferenceService": upstream},
        default_grpc_upstream=upstream,
        metrics_upstream=None,
    )
    envoy = edge.run(EnvoyProcess.start(config, tmp_path))
    try:
        assert envoy.listen_port not in (0, edge.port)
        assert envoy.admin_port != 0
        body = json.dumps({"model": MODEL_ID, "messages": MESSAGES, "stream": True}).encode()
        request = urllib.request.Request(f"{envoy.base_url}/v1/chat/completions", data=body)
        with urllib.request.urlopen(request, timeout=10) as response:
            events = response.read().decode().split("\n\n")
        assert len(events) == len(STREAM_PIECES) + 3
        assert all(e.startswith("data: {") for e in events[:-2])
        assert events[-2:] == ["data: [DONE]", ""]
        assert json.loads(events[-3][len("data: ") :])["choices"][0]["finish_reason"] == "stop"
    finally:
        edge.run(envoy.stop())
    assert envoy.process.returncode is not None
    assert (tmp_path / "envoy.log").is_file()


def test_start_failure_is_reported(edge: Edge, tmp_path: Path) -> None:
    config = json.loads(
        render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=edge.descriptor,
            grpc_upstreams={},
            default_grpc_upstream=Upstream("inference", "127.0.0.1", edge.fake_port),
            metrics_upstream=None,
        )
    )
    config["static_resources"]["clusters"] = []  # the routes now name an unknown cluster
    with pytest.raises(RuntimeError, match="exited"):
        edge.run(EnvoyProcess.start(json.dumps(config), tmp_path, ready_timeout=20))
