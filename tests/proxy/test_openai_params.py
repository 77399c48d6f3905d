"""Validation and defaults of OpenAI parameters (domain, no gRPC)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from openai_compat.params import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    CommonParams,
    chat_job,
    completion_job,
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
    job = chat_job(BASE, [("user", "hi")], now=1700000000.5)
    assert job.sampling.max_tokens == DEFAULT_CHAT_MAX_TOKENS
    assert (job.sampling.temperature, job.sampling.top_p, job.sampling.top_k) == (1.0, 1.0, 0)
    assert job.created == 1700000000
    assert job.request_id.startswith("chatcmpl-")
    assert job.messages == (("user", "hi"),)


def test_completion_defaults_to_16_tokens() -> None:
    job = completion_job(BASE, "Once upon")
    assert job.sampling.max_tokens == DEFAULT_COMPLETION_MAX_TOKENS
    assert job.prompt == "Once upon" and job.request_id.startswith("cmpl-")


def test_content_parts_and_developer_role() -> None:
    job = chat_job(
        BASE,
        [
            ("developer", "be brief"),
            ("user", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        ],
    )
    assert job.messages == (("system", "be brief"), ("user", "ab"))


def test_stop_string_or_list() -> None:
    assert chat_job(params(stop="x"), [("user", "q")]).sampling.stop == ("x",)
    assert chat_job(params(stop=["x", "y"]), [("user", "q")]).sampling.stop == ("x", "y")


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
        ({"n": 2}, [("user", "q")], "n"),
        ({"presence_penalty": 0.5}, [("user", "q")], "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, [("user", "q")], "stop"),
        ({"stop": [""]}, [("user", "q")], "stop"),
        ({"stop": 3}, [("user", "q")], "stop"),
    ],
)
def test_chat_rejections_name_the_field(
    changes: dict[str, Any], messages: list[tuple[str, Any]], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        chat_job(params(**changes), messages)
    assert info.value.message.startswith(field)


@pytest.mark.parametrize("prompt", [None, "", 3, ["a", "b"], [1]])
def test_completion_prompt_rejections(prompt: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^prompt"):
        completion_job(BASE, prompt)


def test_completion_echo_unsupported() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^echo"):
        completion_job(BASE, "x", echo=True)
