"""A generation's attributes and phases on the RPC's span (worker/generation_spans.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import tracing
from worker.engine.base import FinishReason, GenerationChunk
from worker.generation_spans import GenerationSpans, set_worker_id


@pytest.fixture(scope="module")
def exported() -> InMemorySpanExporter:
    # The process-wide provider (the first configure wins), recording into memory.
    provider = tracing.configure_tracing("worker", None)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _spans(*, operation: str, streaming: bool) -> GenerationSpans:
    return GenerationSpans(
        model="org/m",
        request_id="chatcmpl-1",
        operation=operation,
        max_tokens=2,
        streaming=streaming,
    )


def _generate(spans: GenerationSpans) -> None:
    spans.admitted()
    spans.chunk(GenerationChunk(text="", prompt_tokens=7))
    spans.chunk(GenerationChunk(text="a", prompt_tokens=7, completion_tokens=1))
    spans.chunk(GenerationChunk(text="b", prompt_tokens=7, completion_tokens=2))
    spans.chunk(
        GenerationChunk(
            text="", prompt_tokens=7, completion_tokens=2, finish_reason=FinishReason.LENGTH
        )
    )
    spans.end(FinishReason.LENGTH)


def test_attributes_and_phases_on_the_current_span(exported: InMemorySpanExporter) -> None:
    exported.clear()
    set_worker_id("worker-7")
    tracer = trace.get_tracer("test")
    name = "/helios.v1.InferenceService/StreamChatCompletion"
    with tracer.start_as_current_span(name) as rpc:
        _generate(_spans(operation="chat", streaming=True))
    finished = {s.name: s for s in exported.get_finished_spans()}
    assert set(finished) == {"queue", "prefill", "decode", name}
    attributes = dict(finished[name].attributes or {})
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "helios",
        "gen_ai.request.model": "org/m",
        "gen_ai.request.max_tokens": 2,
        "gen_ai.request.stream": True,
        "gen_ai.response.id": "chatcmpl-1",
        "helios.worker.id": "worker-7",
        "gen_ai.response.time_to_first_chunk": attributes["gen_ai.response.time_to_first_chunk"],
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 2,
        "gen_ai.response.finish_reasons": ("length",),
        "helios.generation.ending": "length",
    }
    assert attributes["gen_ai.response.time_to_first_chunk"] >= 0
    parent = rpc.get_span_context().span_id
    queue, prefill, decode = (finished[n] for n in ("queue", "prefill", "decode"))
    for phase in (queue, prefill, decode):
        assert phase.parent is not None and phase.parent.span_id == parent
    assert queue.end_time == prefill.start_time  # admission ends the queue, starts prefill
    assert prefill.end_time == decode.start_time  # the first token


def test_nothing_when_the_span_does_not_record(exported: InMemorySpanExporter) -> None:
    exported.clear()
    _generate(_spans(operation="text_completion", streaming=False))
    assert exported.get_finished_spans() == ()
