"""The CPU reference engine: plain Hugging Face transformers, one request per sequence.

This engine is for development, tests and CPU-only workers. It trades throughput for
simplicity: every request runs its own prefill and token-by-token decode with its own KV
cache (no batching, no paged attention), at most ``max_concurrency`` at a time. What it
does get right is the contract of :class:`~worker.engine.base.EngineClient` that a real
engine (vLLM) must also honour: streaming deltas that concatenate to the final text,
stop strings, seeds, cancellation that stops the work, abort, health and counters.

A request is one RequestState (request_state.py) from admission to its end; generate,
prefill and decode are the same steps over it (torch_step.py computes one), with the
pipeline both engines share around them: the prompt's rendering and bounds
(chat_render.py, prompt_bounds.py) and the chunks (outputs.py). The deltas and stops
(detokenizer.py), concurrency slots (slots.py) and parked KV caches (kv_parking.py) are
this engine's own.

Nothing here blocks the event loop: tokenisation, every forward step and the
detokenisation of each step run in a dedicated thread pool (torch releases the GIL in
its kernels, so the loop stays responsive while a step computes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runtime.errors import AlreadyExistsError, EngineDeadError, EngineError, InvalidArgumentError
from worker.engine.adapters import LoraAdapters
from worker.engine.base import (
    EngineClient,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    PrefillResult,
)
from worker.engine.chat_render import prompt_token_ids
from worker.engine.detokenizer import IncrementalText, decode_generated, decode_prompt
from worker.engine.grammar import GrammarCache
from worker.engine.hf_loader import eos_ids, load_causal_lm
from worker.engine.kv_parking import ParkedCaches, rebuild_cache
from worker.engine.logits import check_logit_bias
from worker.engine.outputs import OutputCounters, RequestOutput
from worker.engine.prompt_bounds import PromptLimits
from worker.engine.request_state import RequestState
from worker.engine.slots import Slots
from worker.engine.torch_step import StepResult, forward_sample_decode, make_generator

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from worker.kvtransfer import KVLayer

__all__ = ["TransformersEngine"]

logger = logging.getLogger(__name__)

# Failures after which the process cannot be trusted to serve anything else: memory is
# exhausted (another request would most likely fail the same way, and the allocator
# may be fragmented). Any other exception in a step fails only that request.
_FATAL_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, MemoryError)

# Used when a config has no max_position_embeddings (rare: every decoder we serve has it).
_FALLBACK_CONTEXT_LEN = 2048

# How long shutdown() waits for forward steps already running in threads to return
# before dropping the model (a step cannot be interrupted; one takes milliseconds on
# small models, seconds for a long prefill on a big one).
_SHUTDOWN_STEP_GRACE_S = 30.0


class TransformersEngine(EngineClient):
    """Serves one causal LM with Hugging Face transformers on CPU (or whatever device
    the model was loaded on). Create it with :meth:`load`."""

    supports_disaggregation = True
    supports_adapters = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        *,
        max_concurrency: int = 4,
        kv_ttl_s: float = 60.0,
    ) -> None:
        """Wrap an already loaded model and tokenizer (``load`` is the usual way in).

        Must be called with a running event loop or before one starts; the engine's
        asyncio primitives bind to the loop that first uses them.
        """
        _check_concurrency(max_concurrency)
        self._model: PreTrainedModel | None = model
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        self._model_name = model_name
        self._max_concurrency = self.max_running_requests = max_concurrency
        self._device = next(model.parameters()).device
        config = model.config
        max_len = getattr(config, "max_position_embeddings", None)
        self.max_model_len: int = int(max_len) if max_len else _FALLBACK_CONTEXT_LEN
        self.eos_token_ids = eos_ids(model, tokenizer)
        # The model's vocabulary may be padded beyond the tokenizer's (e.g. to a multiple
        # of 64); ids past the tokenizer decode to nothing, so they are never sampled.
        self._vocab_limit = min(len(tokenizer), int(config.vocab_size))
        self._grammars = GrammarCache(tokenizer, int(config.vocab_size), sorted(self.eos_token_ids))
        # Token ids the model can read (its embedding rows): a prompt id past them is
        # the request's mistake, found before any forward step.
        embeddings = model.get_input_embeddings()
        self._num_embeddings = (
            int(embeddings.num_embeddings)
            if isinstance(embeddings, torch.nn.Embedding)
            else int(config.vocab_size)
        )
        # One thread per concurrent request: steps of different requests overlap (torch
        # releases the GIL), and the pool is ours so to_thread users elsewhere in the
        # process do not queue behind (or in front of) model steps.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency + 1, thread_name_prefix=f"engine-{model_name}"
        )
        # Prompts are tokenized on a thread of their own, so that tokenizing (even of a
        # prompt at the byte bound) never holds a thread a running stream's next step
        # needs; prompts that cannot fit are refused before it (prompt_bounds).
        self._tokenize_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"tokenize-{model_name}"
        )
        self._limits = PromptLimits.of(tokenizer, model_name, self.max_model_len)
        self._slots = Slots(max_concurrency)
        self._requests: dict[str, RequestState] = {}
        self._counters = OutputCounters()
        self._dead_reason: str | None = None
        self._parked = ParkedCaches(kv_ttl_s)
        self._adapters = LoraAdapters(model, model_name)

    @classmethod
    async def load(
        cls,
        model_dir: Path,
        model_name: str,
        *,
        dtype: str = "float32",
        max_concurrency: int = 4,
    ) -> TransformersEngine:
        """Load the tokenizer and model in ``model_dir`` (Hugging Face layout; local files
        only). Raises NotFoundError, InvalidArgumentError (a bad ``dtype`` or
        ``max_concurrency``) or FailedPreconditionError (worker/engine/hf_loader.py)."""
        _check_concurrency(max_concurrency)
        started = time.monotonic()
        model, tokenizer = await load_causal_lm(model_dir, model_name, dtype)
        engine = cls(model, tokenizer, model_name, max_concurrency=max_concurrency)
        # The tokenizer's and the weights' reading; no KV pool (caches grow per request)
        # and no compilation (eager PyTorch).
        engine.load_phases = {"weights": time.monotonic() - started}
        return engine

    # ---------------------------------------------------------------- interface

    @property
    def model_name(self) -> str:
        return self._model_name

    def adapter_ids(self) -> tuple[str, ...]:
        return self._adapters.ids()

    def stats(self) -> EngineStats:
        # No fixed KV pool here (each request grows its own cache), so usage is the
        # tokens held in live caches over the most the engine would ever hold at once.
        capacity = self._max_concurrency * self.max_model_len
        used = sum(s.cache_tokens for s in self._requests.values()) + self._parked.tokens()
        return EngineStats(
            running_requests=self._slots.running,
            waiting_requests=self._slots.waiting,
            kv_cache_usage=min(1.0, used / capacity),
            prefix_cache_hit_rate=0.0,
            generated_tokens_total=self._counters.generated_tokens,
            aborted_requests_total=self._counters.aborted_requests,
        )

    async def check_health(self) -> None:
        self._raise_if_dead()

    def count_tokens(self, request: GenerationRequest) -> int:
        self._raise_if_dead()
        return len(self._prompt_ids(request))

    async def abort(self, request_id: str) -> None:
        state = self._requests.get(request_id)
        if state is not None:
            state.abort_event.set()

    async def shutdown(self) -> None:
        if self._model is None:
            return
        if self._dead_reason is None:
            self._dead_reason = "engine was shut down"
        # Wake every request: queued ones stop waiting, running ones stop after their
        # current step, and all of them raise EngineDeadError.
        for state in self._requests.values():
            state.abort_event.set()
        inflight = [
            asyncio.wrap_future(s.inflight)
            for s in self._requests.values()
            if s.inflight is not None and not s.inflight.done()
        ]
        if inflight:
            # A step cannot be interrupted; let the running ones return before the
            # model goes away under them.
            await asyncio.wait(inflight, timeout=_SHUTDOWN_STEP_GRACE_S)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tokenize_executor.shutdown(wait=False, cancel_futures=True)
        self._parked.clear()
        self._adapters.shutdown()
        self._model = None
        self._tokenizer = None
        gc.collect()
        logger.info("engine shut down", extra={"model": self._model_name})

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream ``request``: one chunk per generated token, the last with finish_reason.

        Closing the stream (aclose, GeneratorExit, CancelledError) stops the request
        after at most the step already computing, and counts it as aborted.
        """
        return self._serve(request, self._begin)

    # ------------------------------------------------- prefill/decode disaggregation

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Compute ``request``'s prompt KV cache and first token.

        Unless the first token already ends the generation, the KV cache is parked under
        the returned handle for :meth:`export_kv` (one fetch; it expires after
        ``kv_ttl_s`` seconds if nobody fetches it).
        """
        self._parked.expire()
        state = await self._open(request)
        try:
            if not await self._admit(state):
                return PrefillResult(first=state.out.abort(), kv_handle=None)
            await self._begin(state)
            first = await self._step(state)
            if first.finish_reason is not None:
                return PrefillResult(first=first, kv_handle=None)
            handle = self._parked.park(state.past, tokens=len(state.prompt_ids))
            return PrefillResult(first=first, kv_handle=handle)
        except asyncio.CancelledError:
            state.out.closed()
            raise
        finally:
            self._close(state)

    async def export_kv(self, handle: str) -> list[KVLayer]:
        """Take the KV cache parked under ``handle`` (layer by layer), removing it."""
        return self._parked.take(handle)

    def decode(
        self, request: GenerationRequest, first_token: int, kv: Sequence[KVLayer]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Continue ``request`` from a prefill made elsewhere: its first token and KV cache.

        Streams the chunks after the first one (the prefill worker sent that one), with
        the same text deltas, counts and finish reasons as :meth:`generate` would.
        """
        return self._serve(request, functools.partial(self._resume, first=first_token, kv=list(kv)))

    # ---------------------------------------------------------------- pipeline

    async def _serve(
        self, request: GenerationRequest, begin: Callable[[RequestState], Awaitable[None]]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream ``request``'s chunks; ``begin`` prepares its first step once it holds a
        slot (the echo of a generation, the resumed cache of a decode)."""
        state = await self._open(request)
        try:
            if not await self._admit(state):
                yield state.out.abort()  # aborted while queued: no step ever ran
                return
            await begin(state)
            while not state.out.finished:
                yield await self._step(state)
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer went away (client disconnected, deadline, task cancelled).
            if state.out.closed():
                logger.debug("request cancelled", extra={"request_id": request.request_id})
            raise
        finally:
            self._close(state)

    async def _open(self, request: GenerationRequest) -> RequestState:
        """``request`` checked, tokenized, its adapter loaded and registered (from here on
        abort reaches it)."""
        self._raise_if_dead()
        check_logit_bias(request.sampling, self._vocab_limit)
        prompt_ids = await self._limits.prompt_ids(
            request, self._prompt_ids, self._tokenize_executor
        )
        guide = None
        if request.sampling.guide is not None:
            guide = await asyncio.get_running_loop().run_in_executor(
                self._tokenize_executor, self._grammars.matcher, request.sampling.guide
            )
        if request.request_id in self._requests:
            raise AlreadyExistsError(f"request {request.request_id!r} is already running")
        # Loaded (once) before the request queues for a slot; released in _close.
        adapter = await self._adapters.acquire(request.adapter)
        state = RequestState(
            request,
            prompt_ids,
            RequestOutput(self._counters, prompt_tokens=len(prompt_ids)),
            IncrementalText(request.sampling, self.eos_token_ids),
            guide,
            adapter,
            make_generator(request.sampling),
        )
        self._requests[request.request_id] = state
        return state

    async def _admit(self, state: RequestState) -> bool:
        """Wait for a concurrency slot; False if the request was aborted first."""
        state.holds_slot = await self._slots.acquire(state.abort_event)
        if not state.holds_slot:
            self._raise_if_dead()  # the abort was the engine's shutdown or death
        return state.holds_slot

    async def _begin(self, state: RequestState) -> None:
        """Before a generation's first step: the prompt's text, when it is echoed."""
        request = state.request
        if request.sampling.echo:
            if request.prompt is not None:
                state.echo = request.prompt
            else:
                state.echo = await self._decode(decode_prompt, state.prompt_ids)

    async def _resume(self, state: RequestState, *, first: int, kv: Sequence[KVLayer]) -> None:
        """Before a decode's first step: the prefill's first token and the prompt's KV
        cache, as if this engine had made them."""
        if state.request.sampling.max_tokens < 2:
            raise InvalidArgumentError(
                "max_tokens must be >= 2 to decode: prefill made the first token"
            )
        if not 0 <= first < self._vocab_limit:
            raise InvalidArgumentError(f"first_token_id {first} is outside the vocabulary")
        model, _ = self._loaded()
        state.past = await asyncio.get_running_loop().run_in_executor(
            self._executor, rebuild_cache, model, kv, len(state.prompt_ids), self._model_name
        )
        state.generated = [first]
        if state.guide is not None:
            state.guide.accept(first)
        state.text.resume(await self._decode(decode_generated, state.generated))
        state.out.add_earlier(1)

    async def _step(self, state: RequestState) -> GenerationChunk:
        """The request's next chunk: its next token's, or its abort's."""
        if state.abort_event.is_set():
            self._raise_if_dead()
            # Flush what was held back (a partial character or a possible stop prefix
            # that never completed): deltas must add up to the text.
            return state.out.abort(state.text.flush())
        return state.advance(await self._run_step(state))

    def _close(self, state: RequestState) -> None:
        if state.holds_slot:
            self._slots.release_after(state.inflight)
        self._adapters.release(state.request.adapter)
        self._requests.pop(state.request.request_id, None)

    # ---------------------------------------------------------------- internals

    def _raise_if_dead(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"engine for {self._model_name} is dead: {self._dead_reason}")

    def _loaded(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        model, tokenizer = self._model, self._tokenizer
        if model is None or tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        return model, tokenizer

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        _, tokenizer = self._loaded()
        return prompt_token_ids(
            tokenizer, request, model_name=self._model_name, vocab_size=self._num_embeddings
        )

    async def _decode(self, decode: Callable[[Any, Sequence[int]], str], ids: list[int]) -> str:
        _, tokenizer = self._loaded()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, decode, tokenizer, ids
        )

    async def _run_step(self, state: RequestState) -> StepResult:
        """One forward pass + sample + detokenise, in the engine's thread pool."""
        model, tokenizer = self._loaded()
        fut = self._executor.submit(
            self._adapters.run,
            state.adapter,
            forward_sample_decode,
            model,
            tokenizer,
            self._device,
            self._vocab_limit,
            state.step_input(self.eos_token_ids),
        )
        state.inflight = fut
        try:
            result = await asyncio.wrap_future(fut)
        except _FATAL_ERRORS as exc:
            self._dead_reason = f"{type(exc).__name__} during generation: {exc}"
            # Dead means dead for everyone: the other requests end after their current
            # step (with EngineDeadError) instead of running on a broken process.
            for other in self._requests.values():
                other.abort_event.set()
            logger.exception(
                "fatal error in a forward step; engine is dead",
                extra={"request_id": state.request.request_id},
            )
            raise EngineDeadError(
                f"engine for {self._model_name} failed fatally: {type(exc).__name__}"
            ) from exc
        except Exception as exc:
            logger.exception("forward step failed", extra={"request_id": state.request.request_id})
            raise EngineError(
                f"generation failed for request {state.request.request_id!r}: {type(exc).__name__}"
            ) from exc
        # Only cleared on success: if the await was cancelled, _close needs the
        # still-running future to know when the slot is really free.
        state.inflight = None
        return result


def _check_concurrency(max_concurrency: int) -> None:
    if max_concurrency < 1:
        raise InvalidArgumentError(f"max_concurrency must be >= 1, got {max_concurrency}")
