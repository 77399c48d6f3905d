"""How the worker maps embeddings onto vLLM's pooling runner, without starting vLLM: the
engine arguments, PoolingParams, prompts, and an embed over an AsyncLLM stand-in that
yields vLLM's own PoolingRequestOutput objects. Needs vLLM importable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.errors import InvalidArgumentError
from worker.engine.base import EmbeddingRequest, GenerationRequest, SamplingParams
from worker.engine.pooling import PoolingConfig
from worker.engine.vllm_engine import VllmConfig, vllm_available

_MISSING = vllm_available()

pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"vLLM is not importable: {_MISSING}")


def test_engine_arguments_select_the_pooling_runner() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from worker.engine.vllm_pooling import POOLING_KV_CACHE_BYTES, engine_kwargs

    config = VllmConfig(
        dtype="float32",
        max_num_seqs=8,
        max_model_len=256,
        kv_role="prefill",
        kv_shared_path=Path("/kv"),
    )
    kwargs = engine_kwargs(Path("/models/minilm"), config)
    assert kwargs["runner"] == "pooling"
    assert (kwargs["model"], kwargs["tokenizer"]) == ("/models/minilm", "/models/minilm")
    assert (kwargs["max_num_seqs"], kwargs["max_model_len"], kwargs["dtype"]) == (8, 256, "float32")
    # Nothing of decoding: no prefix caching choice or KV connector, a token KV cache
    # (without one vLLM's CPU backend reserves 92% of the host's memory).
    assert not {"kv_transfer_config", "enable_prefix_caching"} & set(kwargs)
    assert kwargs["kv_cache_memory_bytes"] == POOLING_KV_CACHE_BYTES
    assert kwargs["enforce_eager"] is False  # VllmConfig's compile defaults to full
    eager = engine_kwargs(Path("/m"), VllmConfig(compile="eager"))
    assert eager["enforce_eager"] is True
    args = AsyncEngineArgs(**kwargs)  # vLLM takes every one of them
    assert args.runner == "pooling"


def test_pooling_params_and_prompts() -> None:
    from vllm import PoolingParams

    from worker.engine.vllm_pooling import pooling_params, prompt_of

    params = pooling_params(64)
    assert isinstance(params, PoolingParams)
    assert (params.task, params.dimensions) == ("embed", 64)
    assert pooling_params(None).dimensions is None
    assert prompt_of("hello") == {"prompt": "hello"}
    assert prompt_of((101, 7, 102)) == {"prompt_token_ids": [101, 7, 102]}


def _output(request_id: str, vector: list[float], prompt_ids: list[int]) -> Any:
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    return PoolingRequestOutput(
        request_id, PoolingOutput(torch.tensor(vector)), prompt_ids, 0, finished=True
    )


def test_vector_of_a_finished_output() -> None:
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    from worker.engine.vllm_pooling import vector_of

    vector, tokens = vector_of(_output("r", [0.5, -0.25], [1, 2, 3]))
    assert (vector, tokens) == ([0.5, -0.25], 3)
    flat = PoolingRequestOutput("r", PoolingOutput(torch.zeros(2, 2)), [1], 0, finished=True)
    with pytest.raises(Exception, match=r"2-dimensional"):
        vector_of(flat)


class _FakeLLM:
    """AsyncLLM's encode/abort as the engine calls them: one finished output per input
    (its vector: [len(prompt), index]), or a wait forever for the input "hang"."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, str]] = []
        self.aborted: list[str] = []
        self.hanging = asyncio.Event()
        self.model_config = type("MC", (), {"max_model_len": 16, "get_hidden_size": lambda s: 2})()

    async def encode(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.calls.append((prompt, params, request_id))
        if prompt.get("prompt") == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        if prompt.get("prompt") == "too long":
            raise ValueError("the input is longer than max_model_len")
        ids = prompt.get("prompt_token_ids") or [0] * len(prompt["prompt"].split())
        yield _output(request_id, [float(len(ids)), float(len(self.calls))], ids)

    async def abort(self, request_ids: Any) -> None:
        self.aborted += list(request_ids)


def _engine(llm: _FakeLLM, pooling: PoolingConfig | None = None) -> Any:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from worker.engine.vllm_pooling import VllmEmbeddingEngine

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, "a")))
    return VllmEmbeddingEngine(llm, tokenizer, "embedder", pooling or PoolingConfig(), 2)


async def test_embed_sends_every_input_at_once_and_counts_tokens() -> None:
    llm = _FakeLLM()
    engine = _engine(llm, PoolingConfig(matryoshka_dimensions=()))
    out = await engine.embed(EmbeddingRequest("req", ("one two", (5, 6, 7)), dimensions=1))
    assert [c[2] for c in llm.calls] == ["req-0", "req-1"]
    assert [c[0] for c in llm.calls] == [{"prompt": "one two"}, {"prompt_token_ids": [5, 6, 7]}]
    assert {(c[1].task, c[1].dimensions) for c in llm.calls} == {("embed", 1)}
    assert [v[0] for v in out.vectors] == [2.0, 3.0]
    assert out.prompt_tokens == 5


async def test_refusals_and_aborts() -> None:
    llm = _FakeLLM()
    engine = _engine(llm)
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: model embedder gives 2-dim"):
        await engine.embed(EmbeddingRequest("r1", ("x",), dimensions=1))
    with pytest.raises(InvalidArgumentError, match=r"^vLLM rejected the input: the input is long"):
        await engine.embed(EmbeddingRequest("r2", ("too long",)))
    with pytest.raises(InvalidArgumentError, match=r"^model: embedder is an embedding model"):
        async for _ in engine.generate(GenerationRequest("g", SamplingParams(), prompt="x")):
            pass
    assert not llm.calls or llm.calls[-1][2] == "r2-0"

    task = asyncio.create_task(engine.embed(EmbeddingRequest("r3", ("ok", "hang"))))
    await llm.hanging.wait()
    task.cancel()  # the client left: what vLLM still runs is aborted there
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.aborted == ["r3-1"]
