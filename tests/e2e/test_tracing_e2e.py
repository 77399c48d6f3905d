"""One trace from Envoy to the engine: `helios up --otlp-endpoint` with an OTLP receiver
in the test process, a request through the front door, and the spans the mesh sends.

Envoy's span (service helios-envoy) continues the client's ``traceparent``; the worker's
server span is its child and carries the GenAI attributes; the engine's phases are the
worker span's children; Envoy's access log names the trace. With the collector gone,
requests go on unharmed.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion
from otlp_receiver import OtlpReceiver, ReceivedSpan
from support.mesh_harness import Mesh, helios_up

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

CHAT_METHOD = "/helios.v1.InferenceService/CreateChatCompletion"
STREAM_METHOD = "/helios.v1.InferenceService/StreamChatCompletionEvents"
ENVOY, WORKER = "helios-envoy", "helios-worker"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("traced")
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    # Batches every 0.2 s (the SDK's default is 5 s) so the test waits less.
    env = {"OTEL_BSP_SCHEDULE_DELAY": "200"}
    args = ("--otlp-endpoint", receiver.endpoint)
    with helios_up(root, DEFAULT_MODEL_NAME, model_dir, *args, env=env) as mesh:
        yield mesh


def _client(mesh: Mesh, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=mesh.rest_url,
        api_key="unused",
        max_retries=0,
        timeout=60,
        default_headers=headers,
    )


def _of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def _whole(spans: list[ReceivedSpan], trace_id: str, method: str) -> bool:
    """Whether the trace has Envoy's span, the worker's span of ``method`` and the
    engine's decode phase."""
    names = {(s.service, s.name) for s in _of_trace(spans, trace_id)}
    return (
        any(service == ENVOY for service, _ in names)
        and (WORKER, method) in names
        and (WORKER, "decode") in names
    )


@dataclass
class Traced:
    """The traces of two requests: a chat completion whose client sent ``traceparent``
    (``client_span`` in ``trace_id``) and a streamed one that came without."""

    reply: ChatCompletion
    trace_id: str
    client_span: str
    streamed_trace_id: str
    spans: list[ReceivedSpan]


@pytest.fixture(scope="module")
def traced(traced_mesh: Mesh, receiver: OtlpReceiver) -> Traced:
    # Both requests first, then one wait for their spans.
    before = {s.trace_id for s in receiver.spans()}
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    client = _client(traced_mesh, traceparent=f"00-{trace_id}-{client_span}-01")
    reply = client.chat.completions.create(
        model=traced_mesh.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    stream = _client(traced_mesh).chat.completions.create(
        model=traced_mesh.model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=3,
        stream=True,
    )
    assert [chunk for chunk in stream]

    def streamed(spans: list[ReceivedSpan]) -> str | None:
        for span in spans:
            new = span.name == STREAM_METHOD and span.trace_id not in before
            if new and _whole(spans, span.trace_id, STREAM_METHOD):
                return span.trace_id
        return None

    # Envoy sends its spans every 5 s or once it holds 5: a few more requests fill a batch.
    untraced = _client(traced_mesh)
    for _ in range(3):
        untraced.models.list()

    spans = receiver.wait_for(
        lambda spans: _whole(spans, trace_id, CHAT_METHOD) and streamed(spans) is not None
    )
    streamed_trace_id = streamed(spans)
    assert streamed_trace_id is not None
    return Traced(reply, trace_id, client_span, streamed_trace_id, spans)


def test_one_trace_from_envoy_to_the_engine(traced: Traced, traced_mesh: Mesh) -> None:
    spans = _of_trace(traced.spans, traced.trace_id)
    envoy = [s for s in spans if s.service == ENVOY]
    assert len(envoy) == 1, [(s.service, s.name) for s in spans]
    edge = envoy[0]
    # Envoy continued the client's trace, and the worker continued Envoy's.
    assert edge.parent_span_id == traced.client_span
    assert edge.attributes()["gen_ai.request.model"] == traced_mesh.model
    worker = next(s for s in spans if s.service == WORKER and s.name == CHAT_METHOD)
    assert worker.parent_span_id == edge.span_id
    usage = traced.reply.usage
    assert usage is not None
    attributes = worker.attributes()
    assert attributes["gen_ai.request.model"] == traced_mesh.model
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.stream"] is False
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == [traced.reply.choices[0].finish_reason]
    assert attributes["helios.worker.id"] == "worker-0"
    assert attributes["rpc.grpc.status_code"] == "OK"
    # The engine's phases, children of the worker's span, in order and inside it.
    phases = {s.name: s.span for s in spans if s.parent_span_id == worker.span_id}
    assert {"queue", "prefill", "decode"} <= set(phases), sorted(phases)
    assert (
        worker.span.start_time_unix_nano
        <= phases["queue"].start_time_unix_nano
        <= phases["prefill"].start_time_unix_nano
        <= phases["decode"].start_time_unix_nano
        <= phases["decode"].end_time_unix_nano
        <= worker.span.end_time_unix_nano
    )
    # Envoy's access log names the trace (Envoy writes it out within a second).
    log = Path(traced_mesh.info["state_dir"]) / "envoy" / "envoy.log"
    line = re.compile(rf"/v1/chat/completions .* trace={traced.trace_id}\b")
    deadline = time.monotonic() + 10
    while not line.search(log.read_text()):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def test_envoy_starts_the_trace_of_a_request_without_one(traced: Traced) -> None:
    spans = _of_trace(traced.spans, traced.streamed_trace_id)
    edge = next(s for s in spans if s.service == ENVOY)
    assert edge.parent_span_id == ""  # Envoy is the root
    worker = next(s for s in spans if s.name == STREAM_METHOD)
    assert worker.parent_span_id == edge.span_id
    assert worker.attributes()["gen_ai.request.stream"] is True
    assert worker.attributes()["gen_ai.usage.output_tokens"] > 0


def test_requests_go_on_when_the_collector_is_down(
    traced: Traced, traced_mesh: Mesh, receiver: OtlpReceiver
) -> None:
    receiver.stop()
    client = _client(traced_mesh)
    for _ in range(3):
        stream = client.chat.completions.create(
            model=traced_mesh.model,
            messages=[{"role": "user", "content": "still there?"}],
            max_tokens=4,
            stream=True,
        )
        assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in stream)
    # (The mesh then stops with its collector down: helios_up checks it exits cleanly.)
