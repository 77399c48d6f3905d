"""vLLM's pooling runner as the worker's engine for embedding models.

The mapping: the engine is vLLM's AsyncLLM built with ``runner="pooling"`` (vLLM then
applies the model's own pooling: sentence-transformers' Pooling and Normalize modules,
read from the directory); each input is one ``AsyncLLM.encode`` request with
``PoolingParams(task="embed", dimensions=...)`` (a text as ``{"prompt": text}``, token
ids as ``{"prompt_token_ids": ids}``), all of a request's inputs at once so that vLLM
batches them; the vector is the finished output's ``outputs.data``, the tokens its
``prompt_token_ids``. ``dimensions`` is checked here first with the reference engine's
rules (worker.engine.pooling, the same as vLLM's), so both engines refuse alike; anything
vLLM still refuses (an input longer than max_model_len) is the request's mistake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from runtime.errors import EngineDeadError, EngineError, InvalidArgumentError
from worker.engine.base import (
    EmbeddingOutput,
    EmbeddingRequest,
    EngineStats,
    EngineTask,
    GenerationChunk,
    GenerationRequest,
)
from worker.engine.embedding_engine import embedding_refusal
from worker.engine.loading import load_in_thread, require_model_dir
from worker.engine.pooling import PoolingConfig, checked_dimensions, pooling_config
from worker.engine.prompt_bounds import longest_token_bytes
from worker.engine.vllm_config import base_engine_kwargs
from worker.engine.vllm_engine import AsyncLlmEngine, VllmConfig, require_vllm
from worker.engine.vllm_phases import engine_phases

__all__ = ["VllmEmbeddingEngine", "engine_kwargs", "pooling_params", "vector_of"]

logger = logging.getLogger(__name__)


# The KV cache an embedding model is given: nothing is decoded, so a token. Giving one at
# all matters on a CPU: without it vLLM reserves gpu_memory_utilization (0.92) of the
# host's memory and refuses to start when another engine already holds part of it.
POOLING_KV_CACHE_BYTES = 64 * 1024**2


def engine_kwargs(model_dir: Path, config: VllmConfig) -> dict[str, Any]:
    """AsyncEngineArgs for an embedding model: the pooling runner, the worker's knobs that
    apply to it (a token KV cache, no prefix caching or KV connector: nothing is decoded)."""
    kwargs = base_engine_kwargs(model_dir, config)
    kwargs.update(runner="pooling", kv_cache_memory_bytes=POOLING_KV_CACHE_BYTES)
    return kwargs


def pooling_params(dimensions: int | None) -> Any:
    """vLLM's PoolingParams for one input of an embeddings request."""
    from vllm import PoolingParams

    return PoolingParams(task="embed", dimensions=dimensions)


def prompt_of(item: str | tuple[int, ...]) -> dict[str, Any]:
    """One input as vLLM's prompt: text it tokenizes itself, or token ids as given."""
    if isinstance(item, str):
        return {"prompt": item}
    return {"prompt_token_ids": list(item)}


def vector_of(output: Any) -> tuple[list[float], int]:
    """A finished PoolingRequestOutput's vector and prompt token count."""
    error = getattr(output, "error", None)
    if error is not None:
        raise EngineError(f"vLLM failed to embed an input: {error}")
    data = output.outputs.data
    if data.ndim != 1:
        raise EngineError(f"vLLM gave a {data.ndim}-dimensional embedding, not a vector")
    vector: list[float] = data.float().tolist()
    return vector, len(output.prompt_token_ids)


class VllmEmbeddingEngine(AsyncLlmEngine):
    """Embeds with vLLM's pooling runner. Create it with :meth:`load`."""

    task = EngineTask.EMBED

    def __init__(
        self, llm: Any, tokenizer: Any, model_name: str, pooling: PoolingConfig, dimensions: int
    ) -> None:
        self._llm: Any = llm
        self._model_name = model_name
        self._pooling = pooling
        self.dimensions = dimensions
        self.max_tokens = int(llm.model_config.max_model_len)
        self._token_bytes = longest_token_bytes(tokenizer)
        self._active: set[str] = set()

    @classmethod
    async def load(
        cls, model_dir: Path, model_name: str, config: VllmConfig
    ) -> VllmEmbeddingEngine:
        require_vllm()
        model_dir = require_model_dir(model_dir)
        failure = f"vLLM cannot load embedding model {model_name!r} from {model_dir}"
        pooling = await load_in_thread(pooling_config, model_dir, failure=failure)
        llm, tokenizer = await load_in_thread(_start_sync, model_dir, config, failure=failure)
        dimensions = int(llm.model_config.get_hidden_size())
        logger.info("vllm pooling engine started", extra={"model": model_name})
        engine = cls(llm, tokenizer, model_name, pooling, dimensions)
        engine.load_phases = await engine_phases(llm)
        await engine._started(config)
        return engine

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        if self._shut_down:
            raise EngineDeadError(f"engine for {self._model_name} was shut down")
        cut = checked_dimensions(
            self._model_name, request.dimensions, self.dimensions, self._pooling
        )
        limit = self.max_tokens * self._token_bytes
        for index, item in enumerate(request.inputs):
            if isinstance(item, str) and len(item) > limit:
                field = "input" if len(request.inputs) == 1 else f"input[{index}]"
                raise InvalidArgumentError(
                    f"{field}: too long for model {self._model_name}, which reads at most"
                    f" {self.max_tokens} tokens"
                )
        params = pooling_params(cut)
        # One vLLM request per input, all at once (vLLM batches them); one failing or the
        # client leaving stops the others.
        tasks = [
            asyncio.ensure_future(self._one(f"{request.request_id}-{i}", prompt_of(item), params))
            for i, item in enumerate(request.inputs)
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return EmbeddingOutput([v for v, _ in results], sum(n for _, n in results))

    async def _one(
        self, request_id: str, prompt: dict[str, Any], params: Any
    ) -> tuple[list[float], int]:
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead

        self._active.add(request_id)
        try:
            final = None
            async for output in self._llm.encode(prompt, params, request_id):
                final = output
            if final is None or not final.finished:
                raise EngineError(f"vLLM ended embedding request {request_id} unfinished")
            return vector_of(final)
        except asyncio.CancelledError:
            await self._llm.abort([request_id])  # what vLLM still computes for it
            raise
        except VllmDead as exc:
            raise EngineDeadError(f"vLLM engine for {self._model_name} died") from exc
        except ValueError as exc:  # VLLMValidationError: too long, bad dimensions, ...
            raise InvalidArgumentError(f"vLLM rejected the input: {exc}") from exc
        finally:
            self._active.discard(request_id)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        raise embedding_refusal(self._model_name)
        yield  # an async generator, like every engine's generate

    async def abort(self, request_id: str) -> None:
        prefix = f"{request_id}-"
        running = [rid for rid in self._active if rid.startswith(prefix)]
        if running:
            await self._llm.abort(running)

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=len(self._active), waiting_requests=0)

    def count_tokens(self, request: GenerationRequest) -> int:
        raise embedding_refusal(self._model_name)

    async def shutdown(self) -> None:
        llm = self._take_llm()
        if llm is not None:
            await self._stop(llm)


def _start_sync(model_dir: Path, config: VllmConfig) -> tuple[Any, Any]:
    """The AsyncLLM (pooling runner) and the tokenizer (blocking: runs in a thread)."""
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(model_dir, config)))
    return llm, tokenizer
