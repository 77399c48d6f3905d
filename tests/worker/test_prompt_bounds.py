"""A prompt too long for the context is refused from its bytes, before it is tokenized
(worker/engine/prompt_bounds.py): the reported hole was 6 parallel 15 MB prompts freezing
another client's stream for 32 s while the worker's memory grew by 6 GB."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import InvalidArgumentError
from worker.engine.base import ChatMessage, GenerationRequest, SamplingParams
from worker.engine.prompt_bounds import (
    ALWAYS_TOKENIZED_BYTES,
    PromptLimits,
    check_prompt_fits,
    longest_token_bytes,
)
from worker.engine.transformers_engine import TransformersEngine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest_asyncio.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(tiny_model_dir, DEFAULT_MODEL_NAME, max_concurrency=2)
    yield eng
    await eng.shutdown()


def _prompt(text: str, request_id: str = "r", max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, sampling=SamplingParams(max_tokens=max_tokens), prompt=text
    )


def test_bound_from_bytes_alone() -> None:
    floor = ALWAYS_TOKENIZED_BYTES
    check_prompt_fits(_prompt("a" * floor), context_len=100, token_bytes=1, model_name="m")
    check_prompt_fits(_prompt("a" * 96), context_len=100, token_bytes=1000, model_name="m")
    with pytest.raises(InvalidArgumentError) as err:
        check_prompt_fits(_prompt("a" * 96_001), context_len=100, token_bytes=1000, model_name="m")
    assert err.value.message.startswith("prompt has 96001 bytes of text")
    # UTF-8 bytes, not characters; messages count together.
    chat = GenerationRequest(
        request_id="r",
        sampling=SamplingParams(max_tokens=4),
        messages=(ChatMessage("user", "é" * 30_000), ChatMessage("user", "é" * 20_000)),
    )
    with pytest.raises(InvalidArgumentError) as err:
        check_prompt_fits(chat, context_len=100, token_bytes=500, model_name="m")
    assert err.value.message.startswith("messages has 100000 bytes")


async def test_short_prompts_tokenize_on_the_loop_long_ones_on_a_thread() -> None:
    limits = PromptLimits("m", context_len=10_000, token_bytes=4, inline_bytes=100)
    threads: list[int] = []

    def tokenize(request: GenerationRequest) -> list[int]:
        threads.append(threading.get_ident())
        return [1] * len(request.prompt or "")

    loop_thread = threading.get_ident()
    assert await limits.prompt_ids(_prompt("a" * 100), tokenize) == [1] * 100
    assert await limits.prompt_ids(_prompt("é" * 51), tokenize) == [1] * 51  # 102 bytes
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
    # Short text, but token ids or tools that a client can make as long as it likes: what
    # tokenizing reads decides, not the text alone.
    many_ids = GenerationRequest(
        request_id="r", sampling=SamplingParams(max_tokens=4), prompt_token_ids=(1,) * 26
    )
    tools = GenerationRequest(
        request_id="r",
        sampling=SamplingParams(max_tokens=4),
        messages=(ChatMessage("user", "hi"),),
        tools_json="[" + " " * 100 + "]",
    )
    threads.clear()
    await limits.prompt_ids(many_ids, tokenize)
    await limits.prompt_ids(tools, tokenize)
    assert loop_thread not in threads
    threads.clear()
    # The default limits never tokenize on the loop; the token count is checked either way.
    with pytest.raises(InvalidArgumentError, match="exceed the context length"):
        await PromptLimits("m", 50, 4).prompt_ids(_prompt("a" * 49, max_tokens=2), tokenize)
    await PromptLimits("m", 50, 4).prompt_ids(_prompt(""), tokenize)  # nothing to read
    assert len(threads) == 2 and loop_thread not in threads


def test_longest_token_of_the_tiny_model(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    longest = longest_token_bytes(tokenizer)
    assert 1 < longest < 64
    # No token of a real text is longer than the bound says.
    text = "The quick brown fox jumps over the lazy dog. " * 50
    ids = tokenizer(text)["input_ids"]
    assert len(text.encode()) <= len(ids) * longest


async def test_huge_prompts_are_refused_without_stalling_a_stream(
    engine: TransformersEngine,
) -> None:
    bound = (engine.max_model_len - 4) * longest_token_bytes(engine._tokenizer)
    gaps: list[float] = []

    async def stream() -> int:
        request = GenerationRequest(
            request_id="victim",
            sampling=SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.0),
            prompt="Once upon a time",
        )
        last = time.monotonic()
        tokens = 0
        async for chunk in engine.generate(request):
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            tokens += chunk.completion_tokens and 1
        return tokens

    async def huge(index: int) -> float:
        start = time.monotonic()
        with pytest.raises(InvalidArgumentError) as err:
            async for _ in engine.generate(_prompt("x" * 15_000_000, f"huge-{index}")):
                pass
        assert "shorten the prompt" in err.value.message
        assert "xxxx" not in err.value.message
        return time.monotonic() - start

    victim = asyncio.ensure_future(stream())
    await asyncio.sleep(0.05)
    refused_in = await asyncio.gather(*(huge(i) for i in range(6)))
    await victim
    assert max(refused_in) < 0.5, refused_in
    assert max(gaps[1:], default=0.0) < 1.0, gaps
    # Just past the bound: refused the same way; well inside it: tokenized and served.
    with pytest.raises(InvalidArgumentError):
        async for _ in engine.generate(_prompt("y" * max(bound + 1, 16385), "past")):
            pass
    chunks = [c async for c in engine.generate(_prompt("hello " * 20, "inside"))]
    assert chunks[-1].finish_reason is not None
