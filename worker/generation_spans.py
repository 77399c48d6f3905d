"""What a generation adds to its trace: GenAI attributes on the RPC's server span and its
phases as child spans.

Attributes follow OpenTelemetry's GenAI semantic conventions where they have a name
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.response.finish_reasons`` ...); Helios' own are ``helios.*``. The phases are:

* ``queue``: waiting for the request's fair turn in the worker's admission queue;
* ``prefill``: from admission to the first generated token (the engine's own scheduling
  wait and the prompt's prefill: the engine does not tell the two apart);
* ``decode``: from the first token to the last.

Made only when the server span records (an OTLP endpoint is configured and the trace is
sampled): otherwise every method returns at once, so the token path pays one attribute
check per chunk.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import Span

from openai_compat.backend import GenerationStep
from openai_compat.params import Job
from worker.engine.base import FinishReason

__all__ = ["GenerationSpans", "set_worker_id"]

_tracer = trace.get_tracer("helios.worker")
_worker_id = ""


def set_worker_id(worker_id: str) -> None:
    """This process's worker id (``--worker-id``), put on every generation's span."""
    global _worker_id
    _worker_id = worker_id


class GenerationSpans:
    """One generation's attributes and phases, on the span current when it is made."""

    __slots__ = ("_admitted_ns", "_first_token_ns", "_span", "_started_ns")

    def __init__(
        self, *, model: str, request_id: str, operation: str, max_tokens: int, streaming: bool
    ) -> None:
        span = trace.get_current_span()
        self._span: Span | None = span if span.is_recording() else None
        self._started_ns = time.time_ns()
        self._admitted_ns: int | None = None
        self._first_token_ns: int | None = None
        if self._span is None:
            return
        self._span.set_attributes(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": "helios",
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": max_tokens,
                "gen_ai.request.stream": streaming,
                "gen_ai.response.id": request_id,
                "helios.worker.id": _worker_id,
            }
        )

    @classmethod
    def for_job(cls, job: Job, *, streaming: bool) -> GenerationSpans:
        """The spans of an OpenAI job (chat or text completion)."""
        return cls(
            model=job.model,
            request_id=job.request_id,
            operation="chat" if job.messages is not None else "text_completion",
            max_tokens=job.sampling.max_tokens,
            streaming=streaming,
        )

    def admitted(self) -> None:
        """The request's turn came (it leaves the admission queue for the engine)."""
        if self._span is None:
            return
        self._admitted_ns = time.time_ns()
        self._phase("queue", self._started_ns, self._admitted_ns)

    def chunk(self, chunk: GenerationStep) -> None:
        """A chunk of the engine's stream: the first token ends prefill, the last one
        gives the usage."""
        if self._span is None:
            return
        if self._first_token_ns is None and chunk.completion_tokens:
            self._first_token_ns = time.time_ns()
            self._phase("prefill", self._admitted_ns or self._started_ns, self._first_token_ns)
            self._span.set_attribute(
                "gen_ai.response.time_to_first_chunk",
                (self._first_token_ns - self._started_ns) / 1e9,
            )
        if chunk.finish_reason is not None:
            self._span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": chunk.prompt_tokens,
                    "gen_ai.usage.output_tokens": chunk.completion_tokens,
                    "gen_ai.response.finish_reasons": [str(chunk.finish_reason)],
                }
            )

    def end(self, ending: FinishReason | str) -> None:
        """The generation is over (``ending``: its finish reason, or ``error``)."""
        if self._span is None:
            return
        if self._first_token_ns is not None:
            self._phase("decode", self._first_token_ns, time.time_ns())
        self._span.set_attribute("helios.generation.ending", str(ending))

    def _phase(self, name: str, start_ns: int, end_ns: int) -> None:
        assert self._span is not None
        context = trace.set_span_in_context(self._span)
        phase = _tracer.start_span(name, context=context, start_time=start_ns)
        phase.end(end_time=end_ns)
