"""What an InferenceService needs from the service behind it (domain only, no protobuf).

:class:`openai_compat.servicer.InferenceServicer` speaks OpenAI over gRPC; a backend
generates. The worker's backend runs its local engine (warm requests, straight from
Envoy); the proxy's routes the job to a worker, loading the model first when it is READY
nowhere (cold requests).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.logprobs import TokenLogprob
from openai_compat.params import Job
from runtime.errors import UnavailableError


class GenerationStep(Protocol):
    """One step of a generation as the servicer reads it: the text added since the
    previous step and running counts; ``finish_reason`` ("stop" | "length") on the last
    step only. The proxy's :class:`Step` and the worker engine's chunks both are one, so
    neither converts its steps on the way out."""

    @property
    def text(self) -> str: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def logprobs(self) -> Sequence[TokenLogprob]:
        """The log probabilities of the step's tokens (echoed prompt tokens first), when
        the job asked for them; empty otherwise."""
        ...


@dataclass(frozen=True)
class Step:
    """One step of a generation, as a plain value."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" on the last step
    logprobs: Sequence[TokenLogprob] = ()


def merge_steps(steps: Sequence[Step]) -> Step:
    """Consecutive steps of one stream as one (their text in order, the last one's counts
    and finish reason): what piled up while the client was being written to."""
    last = steps[-1]
    return Step(
        "".join(s.text for s in steps),
        last.prompt_tokens,
        last.completion_tokens,
        last.finish_reason,
        tuple(lp for s in steps for lp in s.logprobs),
    )


async def collect(steps: AsyncIterator[GenerationStep]) -> Step:
    """A whole generation as one step: every step's text, the last one's counts and
    finish reason. A stream that ends unfinished is the generator's failure."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    last: GenerationStep | None = None
    async for step in steps:
        parts.append(step.text)
        logprobs.extend(step.logprobs)
        last = step
    if last is None or last.finish_reason is None:
        raise UnavailableError("the generation ended without finishing")
    return Step(
        "".join(parts),
        last.prompt_tokens,
        last.completion_tokens,
        last.finish_reason,
        tuple(logprobs),
    )


@dataclass(frozen=True)
class CallInfo:
    """What the gRPC call says besides the request: its remaining deadline and its
    metadata (lower-case keys, as gRPC delivers them)."""

    deadline_s: float | None
    metadata: Sequence[tuple[str, str | bytes]] = ()

    def header(self, name: str) -> str | None:
        """The first value of metadata ``name``, or None."""
        for key, value in self.metadata:
            if key == name:
                return value if isinstance(value, str) else value.decode(errors="replace")
        return None


@dataclass(frozen=True)
class ModelEntry:
    """One model as ListModels describes it (OpenAI's fields and Helios's own)."""

    id: str
    created: int
    ready_replicas: int = 0
    memory_bytes: int = 0
    memory_source: str = ""
    warm_status: str = ""
    min_replicas: int = 0
    max_replicas: int = 0
    parent: str = ""  # a LoRA adapter's base model


class InferenceBackend(Protocol):
    """Generates for :class:`openai_compat.servicer.InferenceServicer`. Errors are the
    domain's (runtime.errors); one carrying ``retry_after_s`` is answered with a
    ``retry-after`` trailer (by the runtime interceptor)."""

    async def complete(self, job: Job, call: CallInfo) -> GenerationStep:
        """Run ``job`` to its end: one step with the whole text."""
        ...

    def stream(self, job: Job, call: CallInfo) -> AsyncGenerator[GenerationStep, None]:
        """``job``'s steps as they come. Closing the iterator (client gone) stops the
        generation."""
        ...

    async def embed(self, job: EmbeddingJob, call: CallInfo) -> EmbeddingResult:
        """The embeddings of ``job``'s inputs (a model that does not embed:
        InvalidArgumentError)."""
        ...

    async def list_models(self) -> list[ModelEntry]:
        """The models this backend serves, in the order to list them."""
        ...
