"""Validation and defaults of OpenAI parameters (domain, no gRPC)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from openai_compat.params import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    CommonParams,
    chat_request,
    completion_request,
)
from runtime.errors import InvalidArgumentError

BASE = CommonParams(
    model="m",
    max_tokens=None,
    temperature=None,
    top_p=None,
    top_k=None,
    seed=None,
    stop=None,
    n=None,
    presence_penalty=None,
    frequency_penalty=None,
    include_usage=False,
)


def params(**changes: Any) -> CommonParams:
    return dataclasses.replace(BASE, **changes)


def test_chat_defaults() -> None:
    request = chat_request(BASE, [("user", "hi")], now=1700000000.5)
    (job,) = request.jobs
    assert job.sampling.max_tokens == DEFAULT_CHAT_MAX_TOKENS
    assert (job.sampling.temperature, job.sampling.top_p, job.sampling.top_k) == (1.0, 1.0, 0)
    assert job.created == request.created == 1700000000
    assert request.request_id.startswith("chatcmpl-") and job.request_id == request.request_id
    assert job.messages == (("user", "hi"),)
    assert not request.logprobs


def test_completion_defaults_to_16_tokens() -> None:
    request = completion_request(BASE, "Once upon")
    (job,) = request.jobs
    assert job.sampling.max_tokens == DEFAULT_COMPLETION_MAX_TOKENS
    assert job.prompt == "Once upon" and request.request_id.startswith("cmpl-")


def test_n_choices_get_their_own_ids_and_seeds() -> None:
    request = chat_request(params(n=3, seed=7), [("user", "q")])
    assert [job.index for job in request.jobs] == [0, 1, 2]
    assert [job.sampling.seed for job in request.jobs] == [7, 8, 9]
    assert [job.request_id for job in request.jobs] == [
        f"{request.request_id}-{i}" for i in range(3)
    ]
    # usage counts the prompt once, however many choices it has
    assert [job.counts_prompt for job in request.jobs] == [True, False, False]


def test_completion_prompts_as_strings_and_token_ids() -> None:
    request = completion_request(params(n=2), ["a", [5, 6]])
    assert [(job.prompt, job.prompt_token_ids) for job in request.jobs] == [
        ("a", None),
        ("a", None),
        (None, (5, 6)),
        (None, (5, 6)),
    ]
    assert [job.counts_prompt for job in request.jobs] == [True, False, True, False]
    assert completion_request(BASE, [1, 2, 3]).jobs[0].prompt_token_ids == (1, 2, 3)
    assert completion_request(BASE, "x", echo=True).jobs[0].sampling.echo


def test_content_parts_and_developer_role() -> None:
    (job,) = chat_request(
        BASE,
        [
            ("developer", "be brief"),
            ("user", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        ],
    ).jobs
    assert job.messages == (("system", "be brief"), ("user", "ab"))


def test_stop_string_or_list() -> None:
    assert chat_request(params(stop="x"), [("user", "q")]).jobs[0].sampling.stop == ("x",)
    assert chat_request(params(stop=["x", "y"]), [("user", "q")]).jobs[0].sampling.stop == (
        "x",
        "y",
    )


@pytest.mark.parametrize(
    ("changes", "messages", "field"),
    [
        ({"model": ""}, [("user", "q")], "model"),
        ({}, [], "messages"),
        ({}, [("wizard", "q")], "messages[0].role"),
        ({}, [("user", [{"type": "image_url"}])], "messages[0].content"),
        ({"max_tokens": 0}, [("user", "q")], "max_tokens"),
        ({"max_tokens": -5}, [("user", "q")], "max_tokens"),
        ({"temperature": 2.5}, [("user", "q")], "temperature"),
        ({"temperature": float("nan")}, [("user", "q")], "temperature"),
        ({"top_p": 0.0}, [("user", "q")], "top_p"),
        ({"top_k": -1}, [("user", "q")], "top_k"),
        ({"n": 0}, [("user", "q")], "n"),
        ({"n": 10_000}, [("user", "q")], "n"),
        ({"presence_penalty": 2.5}, [("user", "q")], "presence_penalty"),
        ({"frequency_penalty": -3.0}, [("user", "q")], "frequency_penalty"),
        ({"repetition_penalty": 0.0}, [("user", "q")], "repetition_penalty"),
        ({"logit_bias": {"x": 1.0}}, [("user", "q")], "logit_bias"),
        ({"logit_bias": {"5": 500.0}}, [("user", "q")], "logit_bias"),
        ({"min_tokens": 20, "max_tokens": 10}, [("user", "q")], "min_tokens"),
        ({"logprobs": 1000}, [("user", "q")], "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, [("user", "q")], "stop"),
        ({"stop": [""]}, [("user", "q")], "stop"),
        ({"stop": 3}, [("user", "q")], "stop"),
    ],
)
def test_chat_rejections_name_the_field(
    changes: dict[str, Any], messages: list[tuple[str, Any]], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        chat_request(params(**changes), messages)
    assert info.value.message.startswith(field)


@pytest.mark.parametrize("prompt", [None, "", 3, [], ["a", ""], [-1], [[1], 2.5], [True]])
def test_completion_prompt_rejections(prompt: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^prompt"):
        completion_request(BASE, prompt)


def test_best_of_other_than_n_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^best_of"):
        completion_request(params(n=2), "x", best_of=3)
    assert len(completion_request(params(n=2), "x", best_of=2).jobs) == 2
