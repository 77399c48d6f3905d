"""Tool calling and structured outputs, domain only: plans, forcing schemas, the Hermes /
required / named parsers (whole and streamed), and the structured-output fields."""

from __future__ import annotations

import json
import re

import pytest

from openai_compat.structured import Guide, GuideFields, GuideKind, guide_from
from openai_compat.tool_parser import ToolStreamParser, assemble, finish_reason, parse_whole
from openai_compat.tools import ToolChoice, combined_guide, tool_plan
from runtime.errors import InvalidArgumentError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def ids() -> object:
    counter = iter(range(100))
    return lambda: f"call_{next(counter)}"


def test_plans_and_forcing_schemas() -> None:
    assert tool_plan(None, None, None) is None
    assert tool_plan([WEATHER], "none", None) is None
    auto = tool_plan([WEATHER, TIME], None, None)
    assert auto is not None and auto.choice is ToolChoice.AUTO and auto.guide() is None
    assert json.loads(auto.tools_json())[1] == TIME
    named = tool_plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, None)
    assert named is not None and named.guide() == Guide.json_schema(
        {"type": "object", "properties": {}}
    )
    required = tool_plan([WEATHER], "required", False)
    assert required is not None
    guide = required.guide()
    assert guide is not None and guide.kind is GuideKind.JSON_SCHEMA
    schema = json.loads(guide.spec)
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"] == {
        "type": "string",
        "enum": ["get_weather"],
    }


@pytest.mark.parametrize(
    ("tools", "choice", "field"),
    [
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice.function"),
        ([WEATHER], "sometimes", "tool_choice"),
        (None, "required", "tool_choice"),
        ([{"type": "retrieval"}], None, "tools[0].type"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name"),
        ([WEATHER, WEATHER], None, "tools"),
    ],
)
def test_bad_tool_fields_name_the_field(tools: object, choice: object, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match="^" + re.escape(field)):
        tool_plan(tools, choice, None)


def test_a_forced_call_and_a_response_format_conflict() -> None:
    plan = tool_plan([WEATHER], "required", None)
    with pytest.raises(InvalidArgumentError, match="tool_choice"):
        combined_guide(plan, Guide(GuideKind.JSON_OBJECT))


def test_hermes_text_streamed_in_pieces_equals_whole() -> None:
    plan = tool_plan([WEATHER], "auto", None)
    assert plan is not None
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    )
    parser = ToolStreamParser(plan, ids())  # type: ignore[arg-type]
    deltas = [parser.feed(text[i : i + 3]) for i in range(0, len(text), 3)] + [parser.finish()]
    # Content never leaks a piece of the tag; the first delta of a call has id and name.
    assert "".join(d.content for d in deltas) == "Let me check."
    firsts = [c for d in deltas for c in d.calls if c.id is not None]
    assert [(c.index, c.id, c.name, c.arguments) for c in firsts] == [
        (0, "call_0", "get_weather", ""),
        (1, "call_1", "get_weather", ""),
    ]
    answer = assemble(deltas)
    assert [json.loads(c.arguments) for c in answer.calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    whole = parse_whole(plan, text)
    assert whole.content == "Let me check." and len(whole.calls) == 2


def test_hermes_without_calls_or_with_bad_json_is_content() -> None:
    plan = tool_plan([WEATHER], "auto", None)
    assert plan is not None
    assert parse_whole(plan, "Hello <tool").content == "Hello <tool"
    bad = "<tool_call>{not json}</tool_call>"
    assert parse_whole(plan, bad).content == bad and not parse_whole(plan, bad).calls


def test_required_array_and_named_arguments() -> None:
    required = tool_plan([WEATHER, TIME], "required", None)
    assert required is not None
    text = (
        '[{"name":"get_weather","parameters":{"city":"Rome"}},{"name":"get_time","parameters":{}}]'
    )
    answer = parse_whole(required, text)
    assert answer.content is None
    assert [(c.name, c.arguments) for c in answer.calls] == [
        ("get_weather", '{"city": "Rome"}'),
        ("get_time", "{}"),
    ]
    named = tool_plan([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, None)
    assert named is not None
    parser = ToolStreamParser(named, ids())  # type: ignore[arg-type]
    first, second = parser.feed('{"city":'), parser.feed('"Rome"}')
    assert first.calls[0].id == "call_0" and first.calls[0].name == "get_weather"
    assert second.calls[0].id is None and second.calls[0].arguments == '"Rome"}'
    assert assemble([first, second, parser.finish()]).calls[0].arguments == '{"city":"Rome"}'
    assert finish_reason("stop", parser.called) == "tool_calls"
    assert finish_reason("length", parser.called) == "length"


def test_structured_output_fields() -> None:
    assert guide_from(GuideFields(response_format={"type": "text"})) is None
    assert guide_from(GuideFields(response_format={"type": "json_object"})) == Guide(
        GuideKind.JSON_OBJECT
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert guide_from(GuideFields(response_format=rf)) == Guide.json_schema(schema)
    assert guide_from(GuideFields(guided_json=json.dumps(schema))) == Guide.json_schema(schema)
    assert guide_from(GuideFields(structured_outputs={"choice": ["a", "b"]})) == Guide(
        GuideKind.CHOICE, choices=("a", "b")
    )
    assert guide_from(GuideFields(guided_regex="[0-9]+")) == Guide(GuideKind.REGEX, "[0-9]+")
    with pytest.raises(InvalidArgumentError, match=r"^guided_regex: only one"):
        guide_from(GuideFields(response_format={"type": "json_object"}, guided_regex="a"))
    with pytest.raises(InvalidArgumentError, match=r"^response_format.type"):
        guide_from(GuideFields(response_format={"type": "xml"}))
    with pytest.raises(InvalidArgumentError, match=r"^structured_outputs.structural_tag"):
        guide_from(GuideFields(structured_outputs={"structural_tag": "x"}))
    with pytest.raises(InvalidArgumentError, match=r"^structured_outputs: exactly one"):
        guide_from(GuideFields(structured_outputs={"regex": "a", "grammar": "b"}))
