"""The engine boundary (after vLLM's EngineClient).

The worker's servicer talks to an engine only through :class:`EngineClient`; engines are
injected through the servicer's constructor. Nothing here imports protobuf.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from openai_compat.logprobs import TokenLogprob
from openai_compat.params import SAMPLING_EPS as SAMPLING_EPS  # the engines read it here
from openai_compat.params import Sampling
from openai_compat.tools import ToolCall
from runtime.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from worker.kvtransfer import KVLayer


# The engine samples with the request's own validated parameters: one dataclass (its
# fields are the wire's helios.v1.SamplingParams), so an OpenAI job's sampling reaches the
# engine as it is (worker.inference.generation_request).
SamplingParams = Sampling


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn; ``role`` is system, user, assistant or tool. ``tool_calls``: the
    calls an assistant turn made; ``tool_call_id``: the call a tool turn answers."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter (peft's layout: adapter_config.json and the weights) to run one
    request with, on the engine's model as its base. ``adapter_id`` and ``version`` name
    it (an engine loads each :attr:`key` once and keeps it for the requests after);
    ``path`` is the local directory of its files."""

    adapter_id: str
    path: Path
    version: str = ""

    @property
    def key(self) -> str:
        """What the engine keys the loaded adapter by: a new version is a new adapter."""
        return f"{self.adapter_id}@{self.version}" if self.version else self.adapter_id


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Exactly one of ``prompt`` (raw completion), ``prompt_token_ids``
    (a raw completion given as tokens) and ``messages`` (chat, rendered with the model's
    chat template) is set."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    # The JSON text of OpenAI's tools list, which the chat template renders ("" none).
    tools_json: str = ""
    # The LoRA adapter to apply to the model (None: the model alone); only engines with
    # ``supports_adapters`` take one.
    adapter: AdapterRef | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    """The inputs to embed (each a text or its token ids) and, optionally, the shorter
    length the vectors should have (models trained for it only)."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None


@dataclass(frozen=True)
class EmbeddingOutput:
    """One vector per input, in order, and how many tokens the inputs had."""

    vectors: list[list[float]]
    prompt_tokens: int


class EngineTask(enum.StrEnum):
    """What a model does: generate text (chat, completions) or embed its inputs."""

    GENERATE = "generate"
    EMBED = "embed"


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
    # The log probabilities of the chunk's tokens (echoed prompt tokens first), when the
    # request asked for them.
    logprobs: list[TokenLogprob] = field(default_factory=list)


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
        logprobs=[lp for c in chunks for lp in c.logprobs],
    )


@dataclass(frozen=True)
class EngineStats:
    """What an engine reports in heartbeats and the worker's engine metrics
    (worker/engine_metrics.py). ``kv_cache_usage`` is 0..1; the ``*_total`` figures
    count since the engine started (prefix-cache queries and hits in prompt tokens, as
    vLLM counts them)."""

    running_requests: int
    waiting_requests: int
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    generated_tokens_total: int = 0
    aborted_requests_total: int = 0
    prefix_cache_queries_total: int = 0
    prefix_cache_hits_total: int = 0
    preemptions_total: int = 0


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
    :class:`~runtime.errors.EngineDeadError` when the engine cannot serve.
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
    # Seconds of the engine's start by phase, as far as the engine can see them
    # (worker/load_phases.py: weights, kv_cache, compile); the worker calls the rest of
    # the start engine_start. Set once by the engine's loader.
    load_phases: Mapping[str, float] = MappingProxyType({})

    # Whether the engine can sleep: free its accelerator memory but keep what makes it
    # come back in seconds (vLLM's sleep mode, level 1: weights offloaded to host RAM,
    # the KV cache dropped). The worker then keeps a model it is told to unload asleep.
    supports_sleep: bool = False

    async def sleep(self) -> None:
        """Free the accelerator memory; serve nothing until :meth:`wake_up`."""
        raise FailedPreconditionError(f"the engine of {self.model_name} cannot sleep")

    async def wake_up(self) -> None:
        """Take the memory back after :meth:`sleep` and serve again."""
        raise FailedPreconditionError(f"the engine of {self.model_name} cannot sleep")

    # Whether generate() takes requests with an ``adapter`` (LoRA), several adapters per
    # model; adapter_ids() then names those loaded now (heartbeats report them, and the
    # control plane routes an adapter's requests to the workers that hold it first).
    supports_adapters: bool = False

    def adapter_ids(self) -> tuple[str, ...]:
        """The ids of the adapters loaded now (none for an engine without adapters)."""
        return ()

    # What the model does; an embedding engine refuses generations and a generating one
    # refuses embeddings (both as the request's mistake: INVALID_ARGUMENT).
    task: EngineTask = EngineTask.GENERATE

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        """The embeddings of ``request``'s inputs."""
        raise InvalidArgumentError(
            f"model: {self.model_name} is a text generation model; it serves"
            " /v1/chat/completions and /v1/completions, not embeddings"
        )

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
