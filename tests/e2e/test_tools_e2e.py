"""Tool calling and structured outputs through the real mesh (`helios up`, Envoy's REST
transcoding, the tiny model with random weights): the official openai SDK, langchain-openai
and litellm. Forced calls and schemas come from structured decoding, so even this model
answers valid calls and JSON."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel
from support.mesh_harness import Mesh

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


class Verdict(BaseModel):
    colour: Literal["red", "blue"]
    ok: bool


def client(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)


def test_openai_tool_call_round_trip(mesh: Mesh) -> None:
    api = client(mesh)
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        first = api.chat.completions.create(
            model=mesh.model,
            messages=QUESTION,
            tools=[WEATHER],
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=150,
            temperature=0,
        )
        answer = first.choices[0]
        assert answer.finish_reason == "tool_calls"
        assert answer.message.content is None
        call: Any = (answer.message.tool_calls or [])[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    # The tool's result goes back; the model answers in text.
    follow: Any = api.chat.completions.create(  # type: ignore[call-overload]
        model=mesh.model,
        messages=[
            *QUESTION,
            answer.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert not follow.choices[0].message.tool_calls


def test_openai_streamed_tool_call_deltas_reassemble(mesh: Mesh) -> None:
    stream = client(mesh).chat.completions.create(
        model=mesh.model,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=150,
        temperature=0,
        stream=True,
        parallel_tool_calls=False,
    )
    deltas = [c.choices[0] for c in stream if c.choices]
    calls: list[Any] = [tc for d in deltas for tc in d.delta.tool_calls or []]
    first = calls[0]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    # Each call's id and name come once, on its first delta; the rest are argument pieces.
    for index in {c.index for c in calls}:
        pieces = [c for c in calls if c.index == index]
        assert pieces[0].id and all(c.id is None and c.function.name is None for c in pieces[1:])
    arguments = "".join(c.function.arguments or "" for c in calls if c.index == 0)
    assert json.loads(arguments)["city"] in ("Paris", "Oslo")
    assert deltas[-1].finish_reason == "tool_calls"


def test_openai_parse_returns_the_pydantic_object(mesh: Mesh) -> None:
    parsed = client(mesh).chat.completions.parse(
        model=mesh.model, messages=QUESTION, response_format=Verdict, max_tokens=150
    )
    assert isinstance(parsed.choices[0].message.parsed, Verdict)


def test_langchain_bind_tools_and_structured_output(mesh: Mesh) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(
        model=mesh.model, base_url=mesh.rest_url, api_key="unused", max_tokens=150, max_retries=0
    )
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Oslo?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke("Judge it")
    assert isinstance(verdict, Verdict)


def test_litellm_tool_call(mesh: Mesh) -> None:
    litellm = pytest.importorskip("litellm")
    response = litellm.completion(
        model=f"openai/{mesh.model}",
        api_base=mesh.rest_url,
        api_key="unused",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
    )
    assert response.choices[0].message.tool_calls[0].function.name == "get_weather"
