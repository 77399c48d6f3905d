"""Issue 15 part A on the reference engine and the real tiny model: logit_bias, penalties,
min_tokens, token-id prompts, echo and log probabilities (their values checked against
the model's own logits)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import InvalidArgumentError
from worker.engine.base import (
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    merge_chunks,
)
from worker.engine.logits import process
from worker.engine.transformers_engine import TransformersEngine

PROMPT = "Once upon a time"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest_asyncio.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(tiny_model_dir, DEFAULT_MODEL_NAME)
    yield eng
    await eng.shutdown()


async def run(engine: TransformersEngine, request_id: str = "r", **kw: Any) -> GenerationChunk:
    prompt_ids = kw.pop("prompt_token_ids", None)
    request = GenerationRequest(
        request_id,
        SamplingParams(**kw),
        prompt=None if prompt_ids else PROMPT,
        prompt_token_ids=prompt_ids,
    )
    return merge_chunks([c async for c in engine.generate(request)])


def token_ids(engine: TransformersEngine, text: str) -> tuple[int, ...]:
    assert engine._tokenizer is not None
    return tuple(engine._tokenizer(text)["input_ids"])


async def test_a_huge_logit_bias_makes_greedy_output_that_token(
    engine: TransformersEngine,
) -> None:
    plain = await run(engine, temperature=0, max_tokens=4, ignore_eos=True)
    target = next(t for t in range(100, 200) if t not in plain.token_ids)
    biased = await run(
        engine, temperature=0, max_tokens=4, ignore_eos=True, logit_bias=((target, 100.0),)
    )
    assert biased.token_ids == [target] * 4


async def test_logit_bias_outside_the_vocabulary_is_the_requests_fault(
    engine: TransformersEngine,
) -> None:
    with pytest.raises(InvalidArgumentError, match="logit_bias"):
        await run(engine, logit_bias=((10**9, 1.0),))


async def test_penalties_change_what_greedy_repeats(engine: TransformersEngine) -> None:
    plain = await run(engine, temperature=0, max_tokens=12, ignore_eos=True)
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # the tiny model repeats
    penalised = await run(
        engine, temperature=0, max_tokens=12, ignore_eos=True, frequency_penalty=2.0
    )
    assert penalised.token_ids != plain.token_ids
    repeated = await run(
        engine, temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=5.0
    )
    assert repeated.token_ids != plain.token_ids


def test_processing_matches_vllms_definitions() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    sampling = SamplingParams(
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logit_bias=((3, 10.0),),
        min_tokens=3,
    )
    out = process(logits, sampling, prompt_ids=[0], generated=[1, 1], eos_ids={2})
    # 0: in the prompt, positive -> halved. 1: generated twice, negative -> doubled, then
    # 2 * 0.5 + 0.25 off. 2: eos before min_tokens -> masked. 3: biased.
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(-4.0 - 1.25)
    assert out[2] == -math.inf
    assert out[3] == pytest.approx(10.5)


async def test_token_id_prompts_answer_as_their_text(engine: TransformersEngine) -> None:
    by_text = await run(engine, temperature=0, max_tokens=5, ignore_eos=True)
    by_ids = await run(
        engine,
        temperature=0,
        max_tokens=5,
        ignore_eos=True,
        prompt_token_ids=token_ids(engine, PROMPT),
    )
    assert (by_ids.text, by_ids.prompt_tokens) == (by_text.text, by_text.prompt_tokens)


async def test_min_tokens_holds_off_stop_strings(engine: TransformersEngine) -> None:
    plain = await run(engine, temperature=0, max_tokens=8, ignore_eos=True)
    stop = plain.text[1:3]
    assert stop.strip() and (await run(engine, temperature=0, max_tokens=8, stop=(stop,))).text
    held = await run(engine, temperature=0, max_tokens=8, stop=(stop,), min_tokens=8)
    assert held.completion_tokens == 8


async def test_logprobs_are_the_models_own(engine: TransformersEngine) -> None:
    out = await run(engine, temperature=0, max_tokens=3, ignore_eos=True, logprobs=3)
    assert len(out.logprobs) == 3
    for lp, token in zip(out.logprobs, out.token_ids, strict=True):
        assert lp.logprob is not None and lp.logprob <= 0
        assert len(lp.top) == 3
        # Greedy picks the most likely token: it heads the alternatives.
        assert lp.top[0] == (lp.token, pytest.approx(lp.logprob))
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert engine._tokenizer is not None
        assert lp.token == engine._tokenizer.decode([token])
    none = await run(engine, temperature=0, max_tokens=3, ignore_eos=True)
    assert none.logprobs == []


async def test_echo_puts_the_prompt_and_its_logprobs_first(engine: TransformersEngine) -> None:
    plain = await run(engine, temperature=0, max_tokens=3, ignore_eos=True)
    echoed = await run(engine, temperature=0, max_tokens=3, ignore_eos=True, echo=True, logprobs=1)
    assert echoed.text == PROMPT + plain.text
    prompt_len = len(token_ids(engine, PROMPT))
    assert len(echoed.logprobs) == prompt_len + 3
    assert echoed.logprobs[0].logprob is None
    assert all(lp.logprob is not None for lp in echoed.logprobs[1:])
    # The generated tokens' log probabilities do not depend on the echo.
    again = await run(engine, temperature=0, max_tokens=3, ignore_eos=True, logprobs=1)
    assert [lp.logprob for lp in echoed.logprobs[prompt_len:]] == pytest.approx(
        [lp.logprob for lp in again.logprobs], abs=1e-4
    )
    by_ids = await run(
        engine,
        temperature=0,
        max_tokens=3,
        ignore_eos=True,
        echo=True,
        prompt_token_ids=token_ids(engine, PROMPT),
    )
    assert by_ids.text.endswith(PROMPT + plain.text)
