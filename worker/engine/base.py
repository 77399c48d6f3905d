"""The engine boundary (after vLLM's EngineClient).

The worker's servicer talks to an engine only through :class:`EngineClient`; engines are
injected through the servicer's constructor. Nothing here imports protobuf.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.errors import FailedPreconditionError, HeliosError, UnavailableError

if TYPE_CHECKING:
    from worker.kvtransfer import KVLayer


class EngineError(HeliosError):
    """A recoverable failure of one request; the engine keeps serving others."""


class EngineDeadError(UnavailableError):
    """The engine can no longer serve anything; the worker must report itself unhealthy."""


# A temperature below this is greedy, in every engine (vLLM's _SAMPLING_EPS): dividing
# logits by a smaller one (1e-45 is a valid float32) overflows and the softmax is NaN.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``top_k == 0`` and ``top_p == 1.0`` disable those filters;
    ``temperature == 0`` (or below :data:`SAMPLING_EPS`) means greedy. ``seed`` makes
    sampling reproducible. ``ignore_eos`` keeps generating past end-of-sequence tokens
    (benchmarks, tests)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always picked (temperature below
        :data:`SAMPLING_EPS`)."""
        return self.temperature < SAMPLING_EPS


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn; ``role`` is system, user, assistant or tool."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Exactly one of ``prompt`` (raw completion) and ``messages``
    (chat, rendered with the model's chat template) is set."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None


class FinishReason(enum.StrEnum):
    """Why a generation ended (OpenAI's names)."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass
class GenerationChunk:
    """A step of a generation: the new text since the previous chunk and running counts.

    The last chunk of a stream has ``finish_reason`` set. ``text`` may be empty (e.g. the
    new token completes no printable character yet, or it is the final bookkeeping chunk).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None


def merge_chunks(chunks: Sequence[GenerationChunk]) -> GenerationChunk:
    """Consecutive chunks of one stream as one: their text and tokens in order, the last
    one's running counts and finish reason."""
    last = chunks[-1]
    return GenerationChunk(
        text="".join(c.text for c in chunks),
        token_ids=[t for c in chunks for t in c.token_ids],
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        finish_reason=last.finish_reason,
    )


@dataclass(frozen=True)
class EngineStats:
    """What an engine reports in heartbeats."""

    running_requests: int
    waiting_requests: int
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    generated_tokens_total: int = 0
    aborted_requests_total: int = 0


@dataclass(frozen=True)
class PrefillResult:
    """What a prefill produced: the first chunk, and the handle of the parked KV cache
    (None when the first chunk already finished the generation: nothing to decode)."""

    first: GenerationChunk
    kv_handle: str | None


class EngineClient(ABC):
    """An inference engine serving one model.

    ``generate`` is an async generator: closing it (client gone, CancelledError or
    GeneratorExit) must stop the work for that request. ``check_health`` raises
    :class:`EngineDeadError` when the engine cannot serve.
    """

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model id this engine serves."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the generation for ``request``."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop the request ``request_id`` if it is running; unknown ids are ignored."""

    @abstractmethod
    async def check_health(self) -> None:
        """Return if the engine can serve; raise EngineDeadError otherwise."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """Current load and counters."""

    @abstractmethod
    def count_tokens(self, request: GenerationRequest) -> int:
        """How many prompt tokens ``request`` has once rendered (chat template applied)."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Release the model's memory; the engine serves nothing afterwards."""

    # True when the stream already merges the chunks its reader has not taken yet into
    # one (vLLM's DELTA output collector does): the worker then sends the stream as it
    # comes instead of coalescing it again (runtime.streams.coalesce, one more task hop
    # per chunk).
    merges_backlog: bool = False
    # How many requests the engine runs at once (the reference engine's max_concurrency,
    # vLLM's max_num_seqs); the worker's fair admission queue (worker/admission.py) holds
    # the rest, so the engine's own first-come-first-served queue stays empty. None: no
    # limit known, requests go straight in.
    max_running_requests: int | None = None
    # The memory the engine was sized to use (weights, KV cache, activations, overhead),
    # when known; the worker charges it against its capacity instead of the weights'
    # bytes alone.
    memory_bytes: int | None = None

    # Prefill/decode disaggregation. Optional: an engine that cannot move its KV cache
    # keeps the defaults, and the worker serves it in combined mode only.

    supports_disaggregation: bool = False
    # True when the KV cache moves between prefill and decode engines by itself (vLLM's
    # KV connector through shared storage): Decode then fetches nothing from the
    # prefill worker.
    kv_via_connector: bool = False
    disaggregation_unsupported_reason: str = (
        "this engine does not support prefill/decode disaggregation"
    )

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Compute the prompt's KV cache and the first token; park the cache for export."""
        raise FailedPreconditionError(self.disaggregation_unsupported_reason)

    async def export_kv(self, handle: str) -> list[KVLayer]:
        """Take the parked KV cache ``handle``: (keys, values) per layer."""
        raise FailedPreconditionError(self.disaggregation_unsupported_reason)

    def decode(
        self, request: GenerationRequest, first_token: int, kv: Sequence[KVLayer]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Continue a request prefilled elsewhere from its first token and KV cache."""
        raise FailedPreconditionError(self.disaggregation_unsupported_reason)
