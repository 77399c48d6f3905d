"""The reference engine's per-request state (transformers_engine.py): what its
generate, prefill and decode share for one request, and how one step's result becomes
the request's next chunk."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.engine.base import GenerationChunk, GenerationRequest
from worker.engine.detokenizer import IncrementalText
from worker.engine.grammar import GuideMatcher
from worker.engine.outputs import RequestOutput
from worker.engine.torch_step import StepInput, StepResult

__all__ = ["RequestState"]


@dataclass
class RequestState:
    """One request of the reference engine from admission to its end: its prompt, its
    generation so far (tokens, KV cache, text) and its output. Generate, prefill and
    decode are steps over it; the engine's abort and shutdown reach it by its id."""

    request: GenerationRequest
    prompt_ids: list[int]
    out: RequestOutput
    text: IncrementalText
    guide: GuideMatcher | None  # structured outputs: masks the logits (None: none)
    adapter: str | None  # peft's name of the LoRA adapter its steps run with
    generator: torch.Generator | None  # its own RNG (None: greedy)
    abort_event: asyncio.Event = field(default_factory=asyncio.Event)
    holds_slot: bool = False
    # The forward step currently computing in a thread, if any: a cancelled consumer
    # leaves it running, and the concurrency slot is released only when it returns.
    inflight: concurrent.futures.Future[StepResult] | None = None
    generated: list[int] = field(default_factory=list)
    past: Any = None  # the KV cache (transformers Cache) once a step ran
    echo: str = ""  # the prompt's text, sent before the first chunk's (echo)

    def step_input(self, eos_token_ids: frozenset[int]) -> StepInput:
        # The whole prompt first, then one token at a time.
        input_ids = self.generated[-1:] if self.past is not None else self.prompt_ids
        return StepInput(
            input_ids=input_ids,
            past=self.past,
            sampling=self.request.sampling,
            generator=self.generator,
            generated=list(self.generated),
            prompt_ids=self.prompt_ids,
            eos_ids=eos_token_ids,
            guide=self.guide,
        )

    def advance(self, step: StepResult) -> GenerationChunk:
        """The chunk of the token ``step`` made."""
        self.past = step.past
        self.generated.append(step.token)
        delta, finish = self.text.add(step.token, step.text)
        chunk = self.out.chunk(self.echo + delta, [step.token], finish, step.logprobs)
        self.echo = ""
        return chunk

    @property
    def cache_tokens(self) -> int:
        """Tokens held in its KV cache, for the kv_cache_usage estimate."""
        return 0 if self.past is None else len(self.prompt_ids) + len(self.generated)
