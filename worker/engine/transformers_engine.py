"""The CPU reference engine: plain Hugging Face transformers, one request per sequence.

This engine is for development, tests and CPU-only workers. It trades throughput for
simplicity: every request runs its own prefill and token-by-token decode with its own KV
cache (no batching, no paged attention), at most ``max_concurrency`` at a time. What it
does get right is the contract of :class:`~worker.engine.base.EngineClient` that a real
engine (vLLM) must also honour: streaming deltas that concatenate to the final text,
stop strings, seeds, cancellation that stops the work, abort, health and counters.

Nothing here blocks the event loop: tokenisation, every forward step and the
detokenisation of each step run in a dedicated thread pool (torch releases the GIL in
its kernels, so the loop stays responsive while a step computes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openai_compat.logprobs import TokenLogprob
from runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
)
from worker.engine.adapters import LoraAdapters
from worker.engine.base import (
    EngineClient,
    EngineDeadError,
    EngineError,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    PrefillResult,
    SamplingParams,
)
from worker.engine.chat_render import prompt_token_ids
from worker.engine.grammar import GrammarCache, GuideMatcher
from worker.engine.logits import (
    check_logit_bias,
    needs_processing,
    process,
    prompt_logprobs,
    token_logprob,
)
from worker.engine.prompt_bounds import PromptLimits
from worker.kvtransfer import KVLayer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TransformersEngine"]

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",  # whatever config.json says
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

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

_REPLACEMENT_CHAR = "\ufffd"

# What a forward step returns: the token, the KV cache, the decoded generation so far, and
# the log probabilities asked for (the prompt's first, on an echoing first step).
_StepOutput = tuple[int, Any, str, list[TokenLogprob]]


@dataclass
class _RequestState:
    """Per-request bookkeeping shared between ``generate`` and ``abort``/``shutdown``."""

    request_id: str
    abort_event: asyncio.Event = field(default_factory=asyncio.Event)
    # The forward step currently computing in a thread, if any: a cancelled consumer
    # leaves it running, and the concurrency slot is released only when it returns.
    inflight: concurrent.futures.Future[_StepOutput] | None = None
    # Tokens held in this request's KV cache, for the kv_cache_usage estimate.
    cache_tokens: int = 0
    # peft's name of the LoRA adapter its steps run with (None: the model alone).
    adapter: str | None = None


@dataclass(frozen=True)
class _Parked:
    """A prefilled request's KV cache waiting for its decode worker to fetch it."""

    past: Any  # transformers DynamicCache
    tokens: int
    created: float


@dataclass(frozen=True)
class _Resume:
    """Where a decode starts: the first token (made by prefill) and the prompt's cache."""

    first_token: int
    kv: list[KVLayer]


@dataclass(frozen=True)
class _StepContext:
    """What a forward step needs besides its input: the prompt (repetition penalty,
    echoed logprobs), the end-of-sequence ids (min_tokens), and whether this is the
    request's first step (its input is the whole prompt)."""

    prompt_ids: list[int]
    eos_ids: Collection[int]
    first: bool
    # Structured outputs: masks the logits, advances by the sampled token (None: none).
    guide: GuideMatcher | None = None


@dataclass(frozen=True)
class _StepResult:
    """What one decode step produced, already detokenised."""

    token: int
    past: Any  # transformers Cache; opaque here
    text: str  # decode of all generated tokens so far (special tokens skipped)
    logprobs: list[TokenLogprob]  # asked for: this token's (after the prompt's, if echoed)


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
        if max_concurrency < 1:
            raise InvalidArgumentError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._model: PreTrainedModel | None = model
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        self._model_name = model_name
        self._max_concurrency = max_concurrency
        self.max_running_requests = max_concurrency
        self._device = next(model.parameters()).device

        config = model.config
        max_len = getattr(config, "max_position_embeddings", None)
        self.max_model_len: int = int(max_len) if max_len else _FALLBACK_CONTEXT_LEN
        self.eos_token_ids: frozenset[int] = frozenset(_eos_ids(model, tokenizer))
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
        # prompt at the byte bound below) never holds a thread a running stream's next
        # step needs; prompts that cannot fit are refused before it (prompt_bounds).
        self._tokenize_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"tokenize-{model_name}"
        )
        self._limits = PromptLimits.of(tokenizer, model_name, self.max_model_len)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._requests: dict[str, _RequestState] = {}
        self._running = 0
        self._waiting = 0
        self._generated_tokens_total = 0
        self._aborted_requests_total = 0
        self._dead_reason: str | None = None
        self._parked: dict[str, _Parked] = {}
        self._kv_ttl_s = kv_ttl_s
        self._adapters = LoraAdapters(model, model_name)

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(
        cls,
        model_dir: Path,
        model_name: str,
        *,
        dtype: str = "float32",
        max_concurrency: int = 4,
    ) -> TransformersEngine:
        """Load the tokenizer and model in ``model_dir`` (Hugging Face layout).

        Raises NotFoundError if the directory or its config.json is missing,
        InvalidArgumentError for a bad ``dtype``/``max_concurrency``, and
        FailedPreconditionError if the files are there but cannot be loaded (corrupt
        or unsupported). Only local files are read: never the Hugging Face hub.
        """
        if max_concurrency < 1:
            raise InvalidArgumentError(f"max_concurrency must be >= 1, got {max_concurrency}")
        torch_dtype = _DTYPES.get(dtype.lower())
        if torch_dtype is None:
            raise InvalidArgumentError(
                f"dtype must be one of {', '.join(sorted(_DTYPES))}, got {dtype!r}"
            )
        model_dir = Path(model_dir)
        # Checked before transformers sees the path: a path that does not exist would be
        # taken for a hub repo id.
        if not model_dir.is_dir():
            raise NotFoundError(f"model directory {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise NotFoundError(
                f"model directory {model_dir} has no config.json (not a Hugging Face model)"
            )
        started = time.monotonic()
        try:
            model, tokenizer = await asyncio.to_thread(_load_sync, model_dir, torch_dtype)
        except HeliosError:
            raise
        except Exception as exc:
            # Corrupt JSON, truncated safetensors, unknown architecture...: the message
            # names the directory and the cause so an operator can act on it.
            raise FailedPreconditionError(
                f"cannot load model {model_name!r} from {model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        logger.info(
            "model loaded",
            extra={"model": model_name, "model_dir": str(model_dir), "dtype": str(model.dtype)},
        )
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
        used = sum(s.cache_tokens for s in self._requests.values())
        used += sum(p.tokens for p in self._parked.values())
        return EngineStats(
            running_requests=self._running,
            waiting_requests=self._waiting,
            kv_cache_usage=min(1.0, used / capacity),
            prefix_cache_hit_rate=0.0,
            generated_tokens_total=self._generated_tokens_total,
            aborted_requests_total=self._aborted_requests_total,
        )

    async def check_health(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"engine for {self._model_name} is dead: {self._dead_reason}")

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
        return self._stream(request)

    # ------------------------------------------------- prefill/decode disaggregation

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Compute ``request``'s prompt KV cache and first token.

        Unless the first token already ends the generation, the KV cache is parked under
        the returned handle for :meth:`export_kv` (one fetch; it expires after
        ``kv_ttl_s`` seconds if nobody fetches it).
        """
        self._expire_parked()
        parked: list[str] = []
        stream = self._stream(request, park_into=parked)
        async with contextlib.aclosing(stream):
            chunks = [chunk async for chunk in stream]
        return PrefillResult(first=chunks[-1], kv_handle=parked[0] if parked else None)

    async def export_kv(self, handle: str) -> list[KVLayer]:
        """Take the KV cache parked under ``handle`` (layer by layer), removing it."""
        self._expire_parked()
        parked = self._parked.pop(handle, None)
        if parked is None:
            raise NotFoundError(
                f"kv cache {handle!r} is not on this worker (never made, already fetched or"
                f" expired after {self._kv_ttl_s:.0f}s)"
            )
        return [(layer.keys, layer.values) for layer in parked.past.layers]

    def decode(
        self, request: GenerationRequest, first_token: int, kv: Sequence[KVLayer]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Continue ``request`` from a prefill made elsewhere: its first token and KV cache.

        Streams the chunks after the first one (the prefill worker sent that one), with
        the same text deltas, counts and finish reasons as :meth:`generate` would.
        """
        return self._stream(request, resume=_Resume(first_token, list(kv)))

    def _expire_parked(self) -> None:
        now = time.monotonic()
        for handle in [h for h, p in self._parked.items() if now - p.created > self._kv_ttl_s]:
            del self._parked[handle]
            logger.info("parked kv cache expired", extra={"kv_handle": handle})

    async def _stream(
        self,
        request: GenerationRequest,
        *,
        resume: _Resume | None = None,
        park_into: list[str] | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The body of generate, prefill (``park_into``: stop after the first token and
        park the cache) and decode (``resume``: start after a first token)."""
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

        # Loaded (once) before the request queues for a slot; released in the finally.
        adapter = await self._adapters.acquire(request.adapter)
        state = _RequestState(request.request_id, adapter=adapter)
        self._requests[request.request_id] = state
        self._waiting += 1
        waiting = True
        holds_slot = False
        finished = False  # the final chunk has been produced; closing now is no abort
        try:
            acquired = await self._acquire_slot(state)
            self._waiting -= 1
            waiting = False
            if not acquired:
                # Aborted (or the engine shut down) while queued: no step ever ran.
                self._raise_if_dead()
                finished = True
                self._aborted_requests_total += 1
                yield GenerationChunk(
                    text="",
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=0,
                    finish_reason=FinishReason.ABORT,
                )
                return
            holds_slot = True
            self._running += 1

            sampling = request.sampling
            stops = sampling.stop
            max_stop = max((len(s) for s in stops), default=0)
            generator = _make_generator(sampling)
            generated: list[int] = []
            emitted = 0  # characters of the decoded text already yielded
            text = ""
            past: Any = None
            next_input: list[int] = prompt_ids
            # Echo: the prompt's text goes before the first chunk's (not on a decode: the
            # prefill worker sent the first chunk).
            echo = ""
            if sampling.echo and resume is None and request.prompt is not None:
                echo = request.prompt
            elif sampling.echo and resume is None:
                echo = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._decode_prompt, prompt_ids
                )
            if resume is not None:
                if sampling.max_tokens < 2:
                    raise InvalidArgumentError(
                        "max_tokens must be >= 2 to decode: prefill made the first token"
                    )
                if resume.first_token < 0 or resume.first_token >= self._vocab_limit:
                    raise InvalidArgumentError(
                        f"first_token_id {resume.first_token} is outside the vocabulary"
                    )
                past = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._rebuild_cache, resume.kv, len(prompt_ids)
                )
                generated = [resume.first_token]
                next_input = [resume.first_token]
                if guide is not None:
                    guide.accept(resume.first_token)
                text = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._decode_text, generated
                )
                # The prefill worker emitted exactly this much of the first token's text.
                emitted = _emit_boundary(text, 0, stops, max_stop)
                state.cache_tokens = len(prompt_ids) + 1

            while True:
                if state.abort_event.is_set():
                    self._raise_if_dead()
                    finished = True
                    self._aborted_requests_total += 1
                    # Flush what was held back (a partial character or a possible stop
                    # prefix that never completed): deltas must add up to the text.
                    yield GenerationChunk(
                        text=text[emitted:],
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(generated),
                        finish_reason=FinishReason.ABORT,
                    )
                    return

                step = await self._run_step(
                    state, next_input, past, sampling, generator, generated, prompt_ids, guide
                )
                past = step.past
                text_before, text = text, step.text
                generated.append(step.token)
                next_input = [step.token]
                state.cache_tokens = len(prompt_ids) + len(generated)
                self._generated_tokens_total += 1

                finish: FinishReason | None = None
                final_end = len(text)
                if step.token in self.eos_token_ids and not sampling.ignore_eos:
                    finish = FinishReason.STOP
                    # The eos token adds no text (it is normally a special token, skipped
                    # by decode; if a tokenizer does not mark it special, it is still
                    # not part of the answer).
                    text = text_before
                    final_end = len(text)
                elif len(generated) >= sampling.min_tokens:
                    stop_at = _find_stop(text, stops, emitted)
                    if stop_at is not None:
                        finish = FinishReason.STOP
                        final_end = stop_at  # the stop string and what follows are dropped
                    elif len(generated) >= sampling.max_tokens:
                        finish = FinishReason.LENGTH

                if finish is None and len(generated) >= sampling.max_tokens:
                    finish = FinishReason.LENGTH
                if finish is not None:
                    finished = True
                    yield GenerationChunk(
                        text=echo + text[emitted:final_end],
                        token_ids=[step.token],
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(generated),
                        finish_reason=finish,
                        logprobs=step.logprobs,
                    )
                    return

                end = _emit_boundary(text, emitted, stops, max_stop)
                delta = text[emitted:end]
                emitted = end
                if park_into is not None:
                    handle = secrets.token_hex(16)
                    self._parked[handle] = _Parked(
                        past=past, tokens=len(prompt_ids), created=time.monotonic()
                    )
                    park_into.append(handle)
                    finished = True
                    yield GenerationChunk(
                        text=echo + delta,
                        token_ids=[step.token],
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(generated),
                        logprobs=step.logprobs,
                    )
                    return
                yield GenerationChunk(
                    text=echo + delta,
                    token_ids=[step.token],
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    logprobs=step.logprobs,
                )
                echo = ""
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer went away (client disconnected, deadline, task cancelled).
            if not finished:
                self._aborted_requests_total += 1
                logger.debug("request cancelled", extra={"request_id": request.request_id})
            raise
        finally:
            if waiting:
                self._waiting -= 1
            if holds_slot:
                self._release_slot_after(state.inflight)
            state.cache_tokens = 0
            self._adapters.release(request.adapter)
            self._requests.pop(request.request_id, None)

    # ---------------------------------------------------------------- internals

    def _raise_if_dead(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"engine for {self._model_name} is dead: {self._dead_reason}")

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        return prompt_token_ids(
            tokenizer, request, model_name=self._model_name, vocab_size=self._num_embeddings
        )

    def _decode_prompt(self, prompt_ids: list[int]) -> str:
        """The text of a prompt given as token ids (special tokens kept, as vLLM echoes)."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        text = tokenizer.decode(prompt_ids, clean_up_tokenization_spaces=False)
        assert isinstance(text, str)
        return text

    def _decode_text(self, generated: list[int]) -> str:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        text = tokenizer.decode(
            generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert isinstance(text, str)
        return text

    def _rebuild_cache(self, kv: Sequence[KVLayer], prompt_len: int) -> Any:
        """A DynamicCache filled layer by layer with a transferred prompt cache."""
        from transformers import DynamicCache

        model = self._model
        if model is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        config = model.config
        num_layers = int(config.num_hidden_layers)
        if len(kv) != num_layers:
            raise InvalidArgumentError(
                f"kv cache has {len(kv)} layers; model {self._model_name!r} has {num_layers}"
            )
        cache = DynamicCache(config=config)
        dtype = next(model.parameters()).dtype
        for index, (key, value) in enumerate(kv):
            if int(key.shape[2]) != prompt_len:
                raise InvalidArgumentError(
                    f"kv cache layer {index} holds {int(key.shape[2])} tokens; the prompt"
                    f" has {prompt_len} on this worker (different model or tokenizer?)"
                )
            cache.update(
                key.to(device=self._device, dtype=dtype),
                value.to(device=self._device, dtype=dtype),
                index,
            )
        return cache

    async def _acquire_slot(self, state: _RequestState) -> bool:
        """Wait for a concurrency slot; False if the request was aborted while queued."""
        if state.abort_event.is_set():
            return False
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # free slot: returns without suspending
            return True
        acquire = asyncio.ensure_future(self._semaphore.acquire())
        aborted = asyncio.ensure_future(state.abort_event.wait())
        got = False
        try:
            await asyncio.wait({acquire, aborted}, return_when=asyncio.FIRST_COMPLETED)
            got = acquire.done() and not acquire.cancelled() and acquire.exception() is None
            return got
        finally:
            aborted.cancel()
            if not acquire.done():
                # A cancelled acquire() never keeps the slot (asyncio hands it on).
                acquire.cancel()
            elif not got and not acquire.cancelled() and acquire.exception() is None:
                # We were cancelled ourselves just as the slot came: give it back.
                self._semaphore.release()

    def _release_slot_after(self, inflight: concurrent.futures.Future[_StepOutput] | None) -> None:
        """Free the concurrency slot now, or once the step still computing returns.

        A consumer cancelled mid-step leaves that step running in its thread; the slot
        stays taken until it ends so no more than max_concurrency steps ever compute.
        """
        if inflight is None or inflight.done():
            self._release_slot()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Finalised outside the loop (generator garbage-collected after the loop
            # stopped): nothing can wait on the slot any more, so free it now.
            self._release_slot()
            return

        def _on_done(_: concurrent.futures.Future[_StepOutput]) -> None:
            # RuntimeError: the loop is closed, nobody is left to wait for the slot.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release_slot)

        inflight.add_done_callback(_on_done)

    def _release_slot(self) -> None:
        self._running -= 1
        self._semaphore.release()

    async def _run_step(
        self,
        state: _RequestState,
        input_ids: list[int],
        past: Any,
        sampling: SamplingParams,
        generator: torch.Generator | None,
        generated: Sequence[int],
        prompt_ids: list[int],
        guide: GuideMatcher | None = None,
    ) -> _StepResult:
        """One forward pass + sample + detokenise, in the engine's thread pool."""
        model, tokenizer = self._model, self._tokenizer
        if model is None or tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        fut = self._executor.submit(
            self._adapters.run,
            state.adapter,
            _forward_sample_decode,
            model,
            tokenizer,
            self._device,
            input_ids,
            past,
            sampling,
            generator,
            list(generated),
            self._vocab_limit,
            _StepContext(prompt_ids, self.eos_token_ids, first=past is None, guide=guide),
        )
        state.inflight = fut
        try:
            token, new_past, text, logprobs = await asyncio.wrap_future(fut)
        except _FATAL_ERRORS as exc:
            self._dead_reason = f"{type(exc).__name__} during generation: {exc}"
            # Dead means dead for everyone: the other requests end after their current
            # step (with EngineDeadError) instead of running on a broken process.
            for other in self._requests.values():
                other.abort_event.set()
            logger.exception(
                "fatal error in a forward step; engine is dead",
                extra={"request_id": state.request_id},
            )
            raise EngineDeadError(
                f"engine for {self._model_name} failed fatally: {type(exc).__name__}"
            ) from exc
        except Exception as exc:
            logger.exception("forward step failed", extra={"request_id": state.request_id})
            raise EngineError(
                f"generation failed for request {state.request_id!r}: {type(exc).__name__}"
            ) from exc
        # Only cleared on success: if the await was cancelled, generate()'s cleanup needs
        # the still-running future to know when the slot is really free.
        state.inflight = None
        return _StepResult(token=token, past=new_past, text=text, logprobs=logprobs)


# ------------------------------------------------------------------ thread-side code


def _load_sync(
    model_dir: Path, torch_dtype: torch.dtype | str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load tokenizer and model from local files only (runs in a worker thread)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if any(model_dir.glob("*.safetensors")):
        # Zero copy: the weights are tensors on the mapped checkpoint files (storaged's
        # cache when the model came through it), paged in in parallel.
        from zerocopy import load_pretrained

        dtype = None if torch_dtype == "auto" else torch_dtype
        model = load_pretrained(model_dir, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    else:  # legacy pickle checkpoints: transformers' own loader
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype, local_files_only=True, trust_remote_code=False
        )
    model.eval()
    return model, tokenizer


def _forward_sample_decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    input_ids: list[int],
    past: Any,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    generated: list[int],
    vocab_limit: int,
    context: _StepContext,
) -> _StepOutput:
    """Run one step: feed ``input_ids`` (the prompt, then one token at a time) through the
    model with its KV cache, pick the next token, and decode the whole generation.

    Decoding everything generated so far (rather than the new token alone) is what makes
    multi-byte characters split across tokens come out right. The logits are processed
    (worker.engine.logits) before sampling; log probabilities, when asked for, are the
    raw logits' (the prompt's too on an echoing first step: every position's logits).
    """

    def decode_one(token_id: int) -> str:
        return str(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))

    count = sampling.logprobs
    with_prompt = count is not None and sampling.echo and context.first
    logprobs: list[TokenLogprob] = []
    # inference_mode is thread-local, so it is entered here, in the worker thread.
    with torch.inference_mode():
        inputs = torch.tensor([input_ids], dtype=torch.long, device=device)
        out = model(
            input_ids=inputs,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=0 if with_prompt else 1,
        )
        raw = out.logits[0, -1, :vocab_limit].float()
        logits = raw
        if needs_processing(sampling):
            logits = process(raw, sampling, context.prompt_ids, generated, context.eos_ids)
        if context.guide is not None:
            logits = context.guide.mask(logits)
        token = _sample(logits, sampling, generator)
        if context.guide is not None:
            context.guide.accept(token)
        if count is not None:
            if with_prompt:
                rows = out.logits[0, :-1, :vocab_limit]
                logprobs = prompt_logprobs(rows, input_ids, count, decode_one)
            logprobs.append(token_logprob(raw, token, count, decode_one))
    generated.append(token)
    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert isinstance(text, str)  # one sequence in, one string out
    return token, out.past_key_values, text, logprobs


def _sample(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> int:
    """Pick a token from 1-D ``logits``: greedy, or temperature + top-k + top-p sampling.

    Whatever the values (a temperature of 1e-45 or 1e30, top_p of 1e-9, NaN or infinite
    logits), this returns a token id in range and never raises: the logits are made
    float32 and sanitised (:func:`_sanitize_logits`), shifted so that their maximum is 0
    before dividing by the temperature (so the division cannot overflow to inf and the
    softmax always has a term of 1), and a temperature below
    :data:`~worker.engine.base.SAMPLING_EPS` is greedy.
    """
    logits = _sanitize_logits(logits)
    if sampling.greedy:
        return int(torch.argmax(logits).item())
    top = logits.max()
    if not bool(torch.isfinite(top)):
        # Nothing is finite (every logit was NaN or -inf): no distribution to sample.
        return int(torch.argmax(logits).item())
    logits = (logits - top) / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the ones before it already cover top_p; the most likely
        # token is always kept.
        drop = (torch.cumsum(probs, dim=-1) - probs) > sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # cannot happen after the shift; kept as a guard
        return int(torch.argmax(logits).item())
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())


def _sanitize_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` as float32 with no NaN and no +inf: NaN becomes -inf (never picked), and
    when some logits are +inf only those remain, equally likely (they all say "certain").
    One reduction when everything is finite, the usual case."""
    logits = logits.float()
    if bool(torch.isfinite(logits).all()):
        return logits
    positive = logits == float("inf")
    if bool(positive.any()):
        return torch.zeros_like(logits).masked_fill(~positive, float("-inf"))
    return torch.nan_to_num(logits, nan=float("-inf"))


# ----------------------------------------------------------------- pure helpers


def _make_generator(sampling: SamplingParams) -> torch.Generator | None:
    """A private RNG per request: concurrent requests never share (or disturb) a random
    stream, so a seeded request samples the same tokens whatever else is running."""
    if sampling.greedy:
        return None
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    return torch.Generator(device="cpu").manual_seed(seed)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token id that ends a generation: the tokenizer's eos and the eos list of
    generation_config.json / config.json (chat models list their end-of-turn token)."""
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id, model.config.eos_token_id]
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        candidates.append(gen_config.eos_token_id)
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, int):
            ids.add(c)
        else:
            ids.update(int(i) for i in c)
    return ids


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest stop string in ``text`` at or after ``start``, or None.

    Text before ``start`` was already emitted, and it can never hold the beginning of a
    match (a tail that could start a stop string is held back), so looking from there
    finds every match.
    """
    best: int | None = None
    for s in stops:
        i = text.find(s, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best


def _emit_boundary(text: str, emitted: int, stops: Sequence[str], max_stop: int) -> int:
    """How far ``text`` may be emitted: hold back a trailing partial UTF-8 character
    (decoded as U+FFFD until its last byte arrives) and any tail that could be the start
    of a stop string, since both may still change what is sent."""
    end = len(text)
    while end > emitted and text[end - 1] == _REPLACEMENT_CHAR:
        end -= 1
    for k in range(min(max_stop - 1, end - emitted), 0, -1):
        tail = text[end - k : end]
        if any(s.startswith(tail) for s in stops):
            return end - k
    return end
