"""The worker's own InferenceService (requests Envoy routes straight to a worker) over
real gRPC, and its REST port (streamed REST requests) over real HTTP/1.1, with a fake
engine: OpenAI answers, usage, errors, cancellation, heartbeat counters and metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from google.api.httpbody_pb2 import HttpBody
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as worker_pb
from prometheus_client import REGISTRY
from support.fakes import FakeEngine, serve_worker_inference

from openai_compat.events import print_json
from openai_compat.protocol import EDGE_HEADER
from openai_compat.servicer import InferenceServicer
from worker.engine.base import EngineClient
from worker.inference import EngineBackend
from worker.metrics import UsageLedger
from worker.models import ModelManager
from worker.server import start_rest_port

MODEL = "fake-model"


class Worker:
    """One worker server's stubs and its engines."""

    def __init__(self, channel: grpc.aio.Channel, engines: dict[str, FakeEngine]) -> None:
        self.inference = inference_pb2_grpc.InferenceServiceStub(channel)
        self.control = worker_pb2_grpc.WorkerServiceStub(channel)
        self.engines = engines

    async def served(self, model: str = MODEL) -> worker_pb.LoadedModel:
        beat = await self.control.Heartbeat(worker_pb.HeartbeatRequest())
        return next(m for m in beat.models if m.model == model)


def model_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    return path


@pytest.fixture
def engines() -> dict[str, FakeEngine]:
    return {}


@pytest.fixture
def loads_held() -> asyncio.Event:
    """Set it to let loads of models named ``slow*`` finish."""
    return asyncio.Event()


@pytest.fixture
def manager(engines: dict[str, FakeEngine], loads_held: asyncio.Event) -> ModelManager:
    async def factory(name: str, path: Path) -> EngineClient:
        if name.startswith("slow"):
            await loads_held.wait()
        engine = FakeEngine(name, step_delay=0.002)
        engines[name] = engine
        return engine

    return ModelManager(factory, engine_kind="fake", capacity_bytes=10_000)


@pytest_asyncio.fixture
async def worker(
    manager: ModelManager, engines: dict[str, FakeEngine], tmp_path: Path
) -> AsyncIterator[Worker]:
    async for _ in manager.load(MODEL, model_dir(tmp_path, MODEL)):
        continue
    running = await serve_worker_inference(manager)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Worker(channel, engines)
    await running.stop(0)


def chat(max_tokens: int = 4, **fields: object) -> pb.ChatCompletionParams:
    params = pb.ChatCompletionParams(model=str(fields.pop("model", MODEL)), max_tokens=max_tokens)
    params.messages.add(role="user").content.string_value = "hello"
    for name, value in fields.items():
        if name == "stop":
            params.stop.string_value = str(value)
        elif name == "include_usage":
            params.stream_options.include_usage = bool(value)
        else:
            setattr(params, name, value)
    return params


def completion(prompt: str = "once upon", max_tokens: int = 3) -> pb.CompletionParams:
    return pb.CompletionParams(
        model=MODEL, prompt=struct_pb2.Value(string_value=prompt), max_tokens=max_tokens
    )


async def stopped_by_abort(engine: FakeEngine) -> None:
    """``engine``'s one request of 100 tokens was aborted before its end (the client went
    away), within a second."""
    for _ in range(100):
        if not engine.running:
            break
        await asyncio.sleep(0.01)
    assert not engine.running
    assert engine.aborted_total == 1
    assert engine.generated < 100


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_chat_completion_answers_like_openai(worker: Worker) -> None:
    response = await worker.inference.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=chat(max_tokens=4))
    )
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "alpha beta gamma delta "
    assert choice.finish_reason == "length"
    prompt_tokens = len("user:hello") // 4 + 1  # FakeEngine's count
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, 4)
    assert response.usage.total_tokens == prompt_tokens + 4


async def test_streamed_chat_with_stop_and_usage(worker: Worker) -> None:
    chunks = [
        c
        async for c in worker.inference.StreamChatCompletion(
            pb.StreamChatCompletionRequest(
                params=chat(max_tokens=10, stop="gamma", include_usage=True)
            )
        )
    ]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert text == "alpha beta "
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [r for r in reasons if r] == ["stop"]
    assert chunks[-1].usage.completion_tokens == 3  # the stop token counts, as in vLLM
    assert not chunks[-1].choices


async def test_completion_streamed_and_not(worker: Worker) -> None:
    whole = await worker.inference.CreateCompletion(
        pb.CreateCompletionRequest(params=completion(max_tokens=3))
    )
    assert whole.object == "text_completion"
    assert whole.choices[0].text == "alpha beta gamma "
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 3
    chunks = [
        c
        async for c in worker.inference.StreamCompletion(
            pb.StreamCompletionRequest(params=completion(max_tokens=3))
        )
    ]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert not any(c.HasField("usage") for c in chunks)  # not asked for


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (chat(temperature=3.0), "temperature"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(n=0), "n"),
        (chat(presence_penalty=3.0), "presence_penalty"),
        (chat(top_p=0.0), "top_p"),
        (pb.ChatCompletionParams(model=MODEL), "messages"),
    ],
)
async def test_bad_parameters_are_invalid_argument_naming_the_field(
    worker: Worker, params: pb.ChatCompletionParams, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await worker.inference.CreateChatCompletion(pb.CreateChatCompletionRequest(params=params))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}:")


async def test_engine_rejection_of_the_prompt_is_invalid_argument(worker: Worker) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await worker.inference.CreateCompletion(
            pb.CreateCompletionRequest(params=completion(prompt="too long"))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_model_not_on_this_worker_is_unavailable_so_the_edge_retries_elsewhere(
    worker: Worker,
) -> None:
    # The edge routes a model here only from the control plane's endpoints: "not here" is
    # a stale route (the model just unloaded or moved), never an unknown model. NOT_FOUND
    # reached soak clients as 404s that Envoy does not retry (issue: proxy restart soak).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await worker.inference.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=chat(model="elsewhere"))
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "elsewhere" in (info.value.details() or "")


async def test_model_loading_here_is_unavailable_so_the_edge_retries_elsewhere(
    worker: Worker, manager: ModelManager, loads_held: asyncio.Event, tmp_path: Path
) -> None:
    async def load() -> None:
        async for _ in manager.load("slow-model", model_dir(tmp_path, "slow-model")):
            continue

    loading = asyncio.create_task(load())
    try:
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await worker.inference.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=chat(model="slow-model"))
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in (info.value.details() or "")
        listed = await worker.inference.ListModels(pb.ListModelsRequest())
        assert [m.id for m in listed.data] == [MODEL]  # READY models only
    finally:
        loads_held.set()
        await loading
    listed = await worker.inference.ListModels(pb.ListModelsRequest())
    assert [m.id for m in listed.data] == [MODEL, "slow-model"]
    assert all(m.ready_replicas == 1 and m.owned_by == "helios" for m in listed.data)


async def test_model_draining_here_is_unavailable(worker: Worker, manager: ModelManager) -> None:
    worker.engines[MODEL].step_delay = 0.05
    running = worker.inference.StreamChatCompletion(
        pb.StreamChatCompletionRequest(params=chat(max_tokens=5))
    )
    await running.read()  # under way: the unload below has to drain it
    unload = asyncio.create_task(manager.unload(MODEL, drain_timeout=10))
    await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await worker.inference.CreateChatCompletion(pb.CreateChatCompletionRequest(params=chat()))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "draining" in (info.value.details() or "")
    while await running.read() != grpc.aio.EOF:  # the running request finishes
        continue
    assert await running.code() == grpc.StatusCode.OK
    assert await unload == 0


@pytest.mark.parametrize("events", [False, True], ids=["chunks", "events"])
async def test_client_cancel_aborts_the_engine_request(worker: Worker, events: bool) -> None:
    engine = worker.engines[MODEL]
    engine.step_delay = 0.05
    aborted = metric("helios_worker_requests_total", model=MODEL, finish_reason="abort")
    params = completion(max_tokens=100)
    call = (
        worker.inference.StreamCompletionEvents(pb.StreamCompletionEventsRequest(params=params))
        if events
        else worker.inference.StreamCompletion(pb.StreamCompletionRequest(params=params))
    )
    await call.read()
    assert engine.running
    call.cancel()
    await stopped_by_abort(engine)
    assert metric("helios_worker_requests_total", model=MODEL, finish_reason="abort") == (
        aborted + 1
    )


async def test_late_failure_of_a_rest_stream_is_a_final_error_chunk(worker: Worker) -> None:
    worker.engines[MODEL].fail_after = 2
    chunks = [
        c
        async for c in worker.inference.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=chat(max_tokens=5)),
            metadata=((EDGE_HEADER, "rest"),),
        )
    ]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "alpha beta "
    assert chunks[-1].error.code == "UNAVAILABLE"
    assert chunks[-1].error.type == "service_unavailable"
    assert "fake engine died" in chunks[-1].error.message


async def test_late_failure_of_a_grpc_stream_is_its_status(worker: Worker) -> None:
    worker.engines[MODEL].fail_after = 2
    call = worker.inference.StreamCompletion(
        pb.StreamCompletionRequest(params=completion(max_tokens=5))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [c async for c in call]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_heartbeat_counts_what_the_worker_served(worker: Worker) -> None:
    before = await worker.served()
    assert (before.requests_total, before.last_request_unix_ms) == (0, 0)
    await worker.inference.CreateChatCompletion(pb.CreateChatCompletionRequest(params=chat()))
    _ = [
        c
        async for c in worker.inference.StreamCompletion(
            pb.StreamCompletionRequest(params=completion(max_tokens=3))
        )
    ]
    after = await worker.served()
    assert after.requests_total == 2
    prompt_tokens = (len("user:hello") // 4 + 1) + (len("once upon") // 4 + 1)
    assert after.prompt_tokens_total == prompt_tokens
    assert after.completion_tokens_total == 4 + 3
    assert after.last_request_unix_ms > 0


async def test_relayed_generations_are_not_counted_twice(worker: Worker) -> None:
    """Generate (the proxy relaying) is the proxy's to count: the heartbeat's counters
    are the worker's direct requests only."""
    request = worker_pb.GenerateRequest(
        request_id="relayed",
        model=MODEL,
        prompt="hi",
        sampling=worker_pb.SamplingParams(max_tokens=2, top_p=1.0),
    )
    _ = [r async for r in worker.control.Generate(request)]
    served = await worker.served()
    assert (served.requests_total, served.completion_tokens_total) == (0, 0)


async def test_prometheus_metrics_per_model(worker: Worker) -> None:
    labels = {"model": MODEL}
    finished = metric("helios_worker_requests_total", finish_reason="length", **labels)
    generated = metric("helios_worker_generated_tokens_total", **labels)
    prompt = metric("helios_worker_prompt_tokens_total", **labels)
    ttft = metric("helios_worker_time_to_first_token_seconds_count", **labels)
    tpot = metric("helios_worker_time_per_output_token_seconds_count", **labels)
    await worker.inference.CreateChatCompletion(pb.CreateChatCompletionRequest(params=chat()))
    assert metric("helios_worker_requests_total", finish_reason="length", **labels) == finished + 1
    assert metric("helios_worker_generated_tokens_total", **labels) == generated + 4
    assert metric("helios_worker_prompt_tokens_total", **labels) == prompt + 3
    assert metric("helios_worker_time_to_first_token_seconds_count", **labels) == ttft + 1
    assert metric("helios_worker_time_per_output_token_seconds_count", **labels) == tpot + 1


async def test_prefill_pool_worker_sends_whole_generations_elsewhere(
    manager: ModelManager, tmp_path: Path
) -> None:
    async for _ in manager.load(MODEL, model_dir(tmp_path, MODEL)):
        continue
    running = await serve_worker_inference(manager, role="prefill")
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(params=chat()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


def events_of(bodies: list[HttpBody]) -> list[str]:
    """The server-sent events of a Stream*Events answer, without their ``data: ``."""
    assert bodies[0].content_type == "text/event-stream"
    assert all(not b.content_type for b in bodies[1:])
    text = b"".join(b.data for b in bodies).decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def without_identity(printed: str) -> dict[str, object]:
    """A chunk's JSON without what differs between two requests (id, created)."""
    data: dict[str, object] = json.loads(printed)
    return {k: v for k, v in data.items() if k not in ("id", "created")}


async def test_chat_events_are_the_streamed_chunks_printed_then_done(worker: Worker) -> None:
    params = chat(max_tokens=6, n=2, stop="delta", include_usage=True)
    chunks = [
        c
        async for c in worker.inference.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params)
        )
    ]
    bodies = [
        b
        async for b in worker.inference.StreamChatCompletionEvents(
            pb.StreamChatCompletionEventsRequest(params=params)
        )
    ]
    events = events_of(bodies)
    assert events[-1] == "[DONE]"
    assert [without_identity(e) for e in events[:-1]] == [
        without_identity(print_json(c)) for c in chunks
    ]
    assert len({json.loads(e)["id"] for e in events[:-1]}) == 1
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 2 * 4


@pytest.mark.parametrize("logprobs", [0, 2], ids=["text", "logprobs"])
async def test_completion_events_are_the_streamed_chunks_printed(
    worker: Worker, logprobs: int
) -> None:
    # Text-only steps go to the printer unbuilt (TextDelta) once their choice has a
    # template; with logprobs every step is a whole chunk. Both print the same events.
    params = completion(max_tokens=6)
    if logprobs:
        params.logprobs = logprobs
    chunks = [
        c
        async for c in worker.inference.StreamCompletion(pb.StreamCompletionRequest(params=params))
    ]
    events = events_of(
        [
            b
            async for b in worker.inference.StreamCompletionEvents(
                pb.StreamCompletionEventsRequest(params=params)
            )
        ]
    )
    assert [without_identity(e) for e in events[:-1]] == [
        without_identity(print_json(c)) for c in chunks
    ]
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == (
        "alpha beta gamma delta epsilon zeta "
    )
    assert all(
        bool(json.loads(e)["choices"][0].get("logprobs")) == bool(logprobs) for e in events[:-1]
    )


async def test_a_late_failure_of_events_is_an_error_event_without_the_edge_mark(
    worker: Worker,
) -> None:
    worker.engines[MODEL].fail_after = 2
    events = events_of(
        [
            b
            async for b in worker.inference.StreamChatCompletionEvents(
                pb.StreamChatCompletionEventsRequest(params=chat(max_tokens=5))
            )
        ]
    )
    error = json.loads(events[-2])["error"]
    assert error["code"] == "UNAVAILABLE" and "fake engine died" in error["message"]
    assert events[-1] == "[DONE]"


async def test_bad_events_request_is_a_status_before_any_event(worker: Worker) -> None:
    call = worker.inference.StreamChatCompletionEvents(
        pb.StreamChatCompletionEventsRequest(params=chat(temperature=3.0))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [b async for b in call]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- REST port
# The worker's OpenAI REST endpoint (openai_compat/rest.py over runtime/http_stream.py):
# where Envoy sends a warm model's streamed REST requests, with the path and headers the
# edge gave them. The same servicer as the gRPC port answers.


@pytest_asyncio.fixture
async def rest(manager: ModelManager, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a REST port over the ``worker``'s models."""
    inference = InferenceServicer(EngineBackend(manager, UsageLedger()))
    server = await start_rest_port(inference, 0, None)
    assert server is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        yield http
    await server.close(grace_s=0)


def sse_body(params: Message) -> bytes:
    """The JSON body a REST client sends for ``params`` (what the transcoder would read)."""
    return json_format.MessageToJson(params, preserving_proto_field_name=True).encode()


def rest_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_rest_port_streams_the_same_events_as_the_grpc_port(
    worker: Worker, rest: httpx.AsyncClient, kind: str
) -> None:
    if kind == "chat":
        params: Message = chat(max_tokens=6, n=2, stop="delta", include_usage=True)
        grpc_call = worker.inference.StreamChatCompletionEvents(
            pb.StreamChatCompletionEventsRequest(params=params)
        )
    else:
        params = completion(max_tokens=6)
        grpc_call = worker.inference.StreamCompletionEvents(
            pb.StreamCompletionEventsRequest(params=params)
        )
    over_grpc = events_of([b async for b in grpc_call])
    pieces = []
    async with rest.stream(
        "POST",
        f"/v1/{'chat/' if kind == 'chat' else ''}completions:stream?api-version=1",
        content=sse_body(params),
        headers={EDGE_HEADER: "rest"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        async for piece in response.aiter_raw():
            pieces.append(piece)
    over_rest = rest_events(b"".join(pieces).decode())
    assert over_rest[-1] == "[DONE]"
    assert [without_identity(e) for e in over_rest[:-1]] == [
        without_identity(e) for e in over_grpc[:-1]
    ]
    assert len(pieces) > 2  # streamed, not one body at the end


async def test_rest_port_keeps_the_connection_for_the_next_request(
    rest: httpx.AsyncClient,
) -> None:
    body = sse_body(completion(max_tokens=2))
    first = await rest.post("/v1/completions:stream", content=body)
    second = await rest.post("/v1/completions:stream", content=body)
    assert first.status_code == second.status_code == 200
    assert rest_events(second.text)[-1] == "[DONE]"
    # httpx reused its one pooled connection: the server kept it open.
    pool = rest._transport._pool  # type: ignore[attr-defined]
    assert len(pool.connections) == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b'{"model": "fake-model", "prompt": "x", "temperature": 9}', 400, 3, "temperature"),
        (b'{"model": "fake-model", "prompt": "x", "max_tokens": "x"}', 400, 3, "max_tokens"),
        (b'{"model": "fake-model", "prompt": ', 400, 3, "request: the body is not valid JSON"),
        (b'{"model": "fake-model", "prompt": "\xff"}', 400, 3, "UTF-8"),
        (b'{"model": "elsewhere", "prompt": "x"}', 503, 14, "elsewhere"),
    ],
    ids=["bad-value", "bad-type", "bad-json", "bad-utf8", "model-not-here"],
)
async def test_rest_port_errors_are_statuses_as_the_transcoder_prints_them(
    rest: httpx.AsyncClient, body: bytes, status: int, code: int, says: str
) -> None:
    # {"code", "message"} is the transcoder's body for a gRPC status: the edge's Lua
    # filter gives both the same OpenAI shape. 503 is what Envoy retries elsewhere.
    response = await rest.post("/v1/completions:stream", content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["code"] == code
    assert says in error["message"]


async def test_rest_port_ignores_fields_the_contract_does_not_name(
    rest: httpx.AsyncClient,
) -> None:
    # As the transcoder does for the same body on the gRPC routes (clients send extras).
    body = b'{"model": "fake-model", "prompt": "x", "max_tokens": 2, "vendor_extra": {"a": 1}}'
    response = await rest.post("/v1/completions:stream", content=body)
    assert response.status_code == 200
    assert rest_events(response.text)[-1] == "[DONE]"


async def test_rest_port_answers_only_its_streamed_paths(rest: httpx.AsyncClient) -> None:
    assert (await rest.post("/v1/completions", content=b"{}")).status_code == 404
    assert (await rest.get("/v1/models")).status_code == 404
    response = await rest.get("/v1/completions:stream")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


async def test_rest_client_gone_aborts_the_engine_request(
    worker: Worker, rest: httpx.AsyncClient
) -> None:
    engine = worker.engines[MODEL]
    engine.step_delay = 0.05
    before = metric(
        "helios_grpc_server_handled_total",
        service="helios.v1.InferenceService",
        method="StreamCompletionEvents",
        code="CANCELLED",
    )
    async with rest.stream(
        "POST", "/v1/completions:stream", content=sse_body(completion(max_tokens=100))
    ) as response:
        async for _ in response.aiter_raw():
            break
        assert engine.running
    # Leaving the block closed the response mid-body: httpx drops the connection.
    await stopped_by_abort(engine)
    # Counted as the gRPC method it stands for.
    assert (
        metric(
            "helios_grpc_server_handled_total",
            service="helios.v1.InferenceService",
            method="StreamCompletionEvents",
            code="CANCELLED",
        )
        == before + 1
    )


async def test_a_late_failure_on_the_rest_port_is_an_error_event(
    worker: Worker, rest: httpx.AsyncClient
) -> None:
    worker.engines[MODEL].fail_after = 2
    response = await rest.post("/v1/chat/completions:stream", content=sse_body(chat(max_tokens=5)))
    assert response.status_code == 200
    events = rest_events(response.text)
    error = json.loads(events[-2])["error"]
    assert error["code"] == "UNAVAILABLE" and "fake engine died" in error["message"]
    assert events[-1] == "[DONE]"
