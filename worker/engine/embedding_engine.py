"""The CPU reference engine for embedding models: Hugging Face ``AutoModel`` and the
pooling sentence-transformers applies (for all-MiniLM-L6-v2: mean pooling over the
attention mask, then L2 normalisation; worker.engine.pooling reads it from the directory).

Tokenising and every forward pass run on the engine's own threads (at most
``max_concurrency`` at once), never on the event loop. Inputs are refused before any
compute when they cannot fit: a text longer than the model's token limit times its
longest vocabulary entry is not even tokenized (worker.engine.prompt_bounds), a tokenized
one longer than the limit is refused naming it (vLLM does the same; sentence-transformers
would cut it silently), and token ids outside the vocabulary are the request's mistake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runtime.errors import (
    EngineDeadError,
    FailedPreconditionError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
)
from worker.engine.base import (
    EmbeddingOutput,
    EmbeddingRequest,
    EngineClient,
    EngineStats,
    EngineTask,
    GenerationChunk,
    GenerationRequest,
)
from worker.engine.pooling import PoolingConfig, checked_dimensions, pooling_config
from worker.engine.prompt_bounds import longest_token_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TransformersEmbeddingEngine", "embedding_refusal"]

logger = logging.getLogger(__name__)

# Inputs per forward pass: bounds the activations of a request with many inputs.
BATCH_SIZE = 32
# When neither the model directory nor its config says how long an input may be.
_FALLBACK_MAX_TOKENS = 512


def embedding_refusal(model: str) -> InvalidArgumentError:
    """What a generation request for embedding model ``model`` gets."""
    return InvalidArgumentError(
        f"model: {model} is an embedding model; it serves /v1/embeddings, not chat or completions"
    )


class TransformersEmbeddingEngine(EngineClient):
    """Embeds with one encoder model on CPU. Create it with :meth:`load`."""

    task = EngineTask.EMBED

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        pooling: PoolingConfig,
        *,
        max_concurrency: int = 4,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidArgumentError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._model: PreTrainedModel | None = model
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        self._model_name = model_name
        self._pooling = pooling
        self.max_running_requests = max_concurrency
        self.max_tokens = pooling.max_tokens or _FALLBACK_MAX_TOKENS
        self.dimensions = int(model.config.hidden_size)
        # Token ids the model can read (its embedding rows).
        embeddings: Any = model.get_input_embeddings()
        self._vocab = int(getattr(embeddings, "num_embeddings", model.config.vocab_size))
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._token_bytes = longest_token_bytes(tokenizer)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix=f"embed-{model_name}"
        )
        self._running = 0
        self._embedded_total = 0
        self._dead_reason: str | None = None

    @classmethod
    async def load(
        cls, model_dir: Path, model_name: str, *, max_concurrency: int = 4
    ) -> TransformersEmbeddingEngine:
        """Load the encoder, tokenizer and pooling in ``model_dir`` (local files only).
        NotFoundError without a config.json; FailedPreconditionError when the files cannot
        be loaded."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise NotFoundError(f"model directory {model_dir} has no config.json")
        try:
            pooling = await asyncio.to_thread(pooling_config, model_dir)
            model, tokenizer = await asyncio.to_thread(_load_sync, model_dir)
        except HeliosError:
            raise
        except Exception as exc:
            raise FailedPreconditionError(
                f"cannot load embedding model {model_name!r} from {model_dir}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        logger.info(
            "embedding model loaded",
            extra={"model": model_name, "pooling": pooling.mode, "normalize": pooling.normalize},
        )
        return cls(model, tokenizer, model_name, pooling, max_concurrency=max_concurrency)

    @property
    def model_name(self) -> str:
        return self._model_name

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        self._raise_if_dead()
        cut = checked_dimensions(
            self._model_name, request.dimensions, self.dimensions, self._pooling
        )
        self._check_text_bounds(request.inputs)
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            ids = await loop.run_in_executor(self._executor, self._token_ids, request.inputs)
            vectors: list[list[float]] = []
            for start in range(0, len(ids), BATCH_SIZE):
                self._raise_if_dead()
                batch = ids[start : start + BATCH_SIZE]
                vectors += await loop.run_in_executor(self._executor, self._forward, batch, cut)
        finally:
            self._running -= 1
        self._embedded_total += len(vectors)
        return EmbeddingOutput(vectors, sum(len(i) for i in ids))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        raise embedding_refusal(self._model_name)
        yield  # an async generator, like every engine's generate

    async def abort(self, request_id: str) -> None:
        """Nothing to stop: a request ends with its forward pass (a client gone cancels
        the batches not started yet)."""

    async def check_health(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"engine for {self._model_name} is dead: {self._dead_reason}")

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=self._running, waiting_requests=0)

    def count_tokens(self, request: GenerationRequest) -> int:
        raise embedding_refusal(self._model_name)

    async def shutdown(self) -> None:
        if self._model is None:
            return
        self._dead_reason = self._dead_reason or "engine was shut down"
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = self._tokenizer = None
        gc.collect()
        logger.info("engine shut down", extra={"model": self._model_name})

    # ------------------------------------------------------------------ internals

    def _raise_if_dead(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"engine for {self._model_name} is dead: {self._dead_reason}")

    @staticmethod
    def _field(index: int, count: int) -> str:
        return "input" if count == 1 else f"input[{index}]"

    def _check_text_bounds(self, inputs: Sequence[str | tuple[int, ...]]) -> None:
        """Refuse, before tokenizing, a text too long to be within the token limit."""
        limit = self.max_tokens * self._token_bytes
        for index, item in enumerate(inputs):
            if isinstance(item, str) and len(item) > limit:  # chars <= UTF-8 bytes
                raise InvalidArgumentError(
                    f"{self._field(index, len(inputs))}: too long for model"
                    f" {self._model_name}, which reads at most {self.max_tokens} tokens"
                )

    def _token_ids(self, inputs: Sequence[str | tuple[int, ...]]) -> list[list[int]]:
        """Each input's token ids (texts tokenized with the model's special tokens),
        checked against the token limit and the vocabulary. Runs on an engine thread."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        texts = [i for i in inputs if isinstance(i, str)]
        encoded = iter(tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else [])
        ids: list[list[int]] = []
        for index, item in enumerate(inputs):
            tokens = [int(t) for t in next(encoded)] if isinstance(item, str) else list(item)
            field = self._field(index, len(inputs))
            if len(tokens) > self.max_tokens:
                raise InvalidArgumentError(
                    f"{field}: {len(tokens)} tokens; model {self._model_name} reads at most"
                    f" {self.max_tokens}"
                )
            if any(t >= self._vocab for t in tokens):
                raise InvalidArgumentError(
                    f"{field}: token ids must be below {self._vocab} (the model's vocabulary)"
                )
            ids.append(tokens)
        return ids

    def _forward(self, batch: list[list[int]], cut: int | None) -> list[list[float]]:
        """One forward pass over ``batch`` (right-padded), pooled. Runs on an engine
        thread."""
        model = self._model
        if model is None:
            raise EngineDeadError(f"engine for {self._model_name} is shut down")
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden.float(), mask, self._pooling.mode)
            if cut is not None:
                pooled = pooled[:, :cut]
            if self._pooling.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        result: list[list[float]] = pooled.tolist()
        return result


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per row of ``hidden`` (batch, tokens, width) from its unpadded tokens:
    their mean, the first (CLS) or the last one."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _load_sync(model_dir: Path) -> tuple[Any, Any]:
    """Tokenizer and encoder from local files only (runs in a thread)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    model = AutoModel.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True, trust_remote_code=False
    )
    model.eval()
    return model, tokenizer
