"""Issue 15's sampling and output fields through the real mesh (`helios up`, Envoy, the
tiny model), driven by the clients users bring: the official openai SDK, langchain-openai
and litellm -- n choices, logprobs in OpenAI's shapes (chat and completions, streamed
too), echo, token-id prompts, penalties and logit_bias."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
from support.mesh_harness import Mesh

QUESTION: Any = [{"role": "user", "content": "Tell me a story"}]


def client(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)


def test_n_choices_count_the_prompt_once(mesh: Mesh) -> None:
    api = client(mesh)
    one = api.chat.completions.create(model=mesh.model, messages=QUESTION, max_tokens=5, seed=1)
    three = api.chat.completions.create(
        model=mesh.model, messages=QUESTION, max_tokens=5, n=3, seed=1, temperature=1.0
    )
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert all(c.message.content for c in three.choices)
    assert len({c.message.content for c in three.choices}) > 1  # seed + i: they differ
    assert three.usage is not None and one.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # counted once
    assert (
        three.usage.completion_tokens
        == sum(
            len(c.logprobs.content) if c.logprobs and c.logprobs.content else 0
            for c in three.choices
        )
        or three.usage.completion_tokens >= 3
    )


def test_chat_logprobs_shape_whole_and_streamed(mesh: Mesh) -> None:
    api = client(mesh)
    answer = api.chat.completions.create(
        model=mesh.model,
        messages=QUESTION,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0 and math.isfinite(token.logprob)
        assert len(token.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert token.logprob == pytest.approx(max(t.logprob for t in token.top_logprobs))
        assert token.bytes == list(token.token.encode("utf-8"))
    streamed = api.chat.completions.create(
        model=mesh.model,
        messages=QUESTION,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    pieces = [
        t
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for t in chunk.choices[0].logprobs.content
    ]
    assert [t.token for t in pieces] == [t.token for t in content]
    assert [t.logprob for t in pieces] == pytest.approx([t.logprob for t in content], abs=1e-4)


def test_completions_logprobs_echo_and_token_id_prompts(mesh: Mesh) -> None:
    api = client(mesh)
    answer = api.completions.create(
        model=mesh.model, prompt="Once upon", max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    choice = answer.choices[0]
    assert choice.text.startswith("Once upon")
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    # The prompt's tokens as the engine saw them: a leading special token (BOS) the text
    # does not show, as in vLLM's echo.
    joined = "".join(logprobs.tokens)
    assert joined == choice.text or (
        logprobs.tokens[0].startswith("<|") and "".join(logprobs.tokens[1:]) == choice.text
    )
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset or [])
    assert logprobs.token_logprobs[0] is None  # the prompt's first token has no context
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])
    # Up to logprobs + 1 alternatives: the chosen token is always among them (OpenAI's).
    for token, alternatives in zip(
        logprobs.tokens[1:], (logprobs.top_logprobs or [])[1:], strict=True
    ):
        assert alternatives is not None and token in alternatives and len(alternatives) <= 3
    # Token ids and lists of prompts: one choice per prompt, in order.
    many = api.completions.create(
        model=mesh.model, prompt=[[5, 6, 7], "Once upon"], max_tokens=3, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    again = api.completions.create(
        model=mesh.model, prompt="Once upon", max_tokens=3, temperature=0
    )
    assert many.choices[1].text == again.choices[0].text


def test_logit_bias_and_penalties_change_greedy_output(mesh: Mesh) -> None:
    api = client(mesh)

    def greedy_tokens(**fields: Any) -> list[str]:
        answer = api.chat.completions.create(
            model=mesh.model,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            **fields,
        )
        choice = answer.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content
        return [t.token for t in choice.logprobs.content]

    plain = greedy_tokens()
    assert greedy_tokens() == plain  # greedy is deterministic
    # A +100 bias makes one token win every step.
    biased = greedy_tokens(logit_bias={"42": 100}, extra_body={"min_tokens": 8})
    assert len(biased) == 8 and len(set(biased)) == 1 and biased != plain
    # Strong penalties on what was already said change a greedy run.
    penalised = greedy_tokens(
        frequency_penalty=2.0,
        presence_penalty=2.0,
        extra_body={"repetition_penalty": 2.0, "min_tokens": 8},
    )
    assert len(penalised) == 8 and penalised != plain


def test_langchain_n_and_logprobs(mesh: Mesh) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    model = chat_openai(
        model=mesh.model,
        base_url=mesh.rest_url,
        api_key="unused",
        max_tokens=5,
        temperature=0,
        max_retries=0,
    )
    reply = model.bind(logprobs=True, top_logprobs=2).invoke("Tell me a story")
    content = reply.response_metadata["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 2 for t in content)
    human = pytest.importorskip("langchain_core.messages").HumanMessage
    several = chat_openai(
        model=mesh.model,
        base_url=mesh.rest_url,
        api_key="unused",
        max_tokens=5,
        temperature=1.0,
        n=3,
        max_retries=0,
    )
    result = several.generate([[human("Tell me a story")]])
    assert len(result.generations[0]) == 3


def test_litellm_n_and_logprobs(mesh: Mesh) -> None:
    litellm = pytest.importorskip("litellm")
    response = litellm.completion(
        model=f"openai/{mesh.model}",
        api_base=mesh.rest_url,
        api_key="unused",
        messages=QUESTION,
        max_tokens=5,
        n=3,
        seed=5,
        logprobs=True,
        top_logprobs=2,
    )
    assert len(response.choices) == 3
    assert all(len(c.logprobs["content"]) >= 1 for c in response.choices)
