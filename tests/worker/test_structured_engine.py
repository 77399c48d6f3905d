"""Structured outputs and tools on the reference engine with the real tiny model (random
weights): the grammar alone makes its output valid."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from openai_compat.structured import Guide, GuideKind
from openai_compat.tool_parser import parse_whole
from openai_compat.tools import ToolCall, tool_plan
from runtime.errors import InvalidArgumentError
from worker.engine.base import ChatMessage, GenerationRequest, SamplingParams
from worker.engine.transformers_engine import TransformersEngine

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z ]{1,6}$"},
        "ok": {"type": "boolean"},
        "colour": {"enum": ["red", "blue"]},
    },
    "required": ["name", "ok", "colour"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
        },
    },
}
# A Hermes-style template (as Qwen/Hermes models ship): tools in the system turn, calls
# as <tool_call> blocks, tool results as tool turns.
HERMES_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|im_start|>system\nTools: <tools>"
    "{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest_asyncio.fixture
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(model_dir, DEFAULT_MODEL_NAME)
    yield eng
    await eng.shutdown()


async def generate(eng: TransformersEngine, request: GenerationRequest) -> str:
    return "".join([c.text async for c in eng.generate(request)])


def chat(guide: Guide | None, *, tools_json: str = "", seed: int = 0) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=80, temperature=1.0, seed=seed, guide=guide)
    messages = (ChatMessage("user", "Describe a thing as JSON"),)
    return GenerationRequest(f"r{seed}", sampling, messages=messages, tools_json=tools_json)


@pytest.mark.asyncio
async def test_json_schema_output_parses_and_validates(engine: TransformersEngine) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for seed in range(3):
        text = await generate(engine, chat(Guide.json_schema(SCHEMA), seed=seed))
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.asyncio
async def test_choice_regex_and_json_object(engine: TransformersEngine) -> None:
    choice = await generate(engine, chat(Guide(GuideKind.CHOICE, choices=("yes", "no"))))
    assert choice in ("yes", "no")
    regex = await generate(engine, chat(Guide(GuideKind.REGEX, "[a-c]{2,4}")))
    assert 2 <= len(regex) <= 4 and set(regex) <= set("abc")
    grammar = await generate(engine, chat(Guide(GuideKind.GRAMMAR, 'root ::= "A" | "BB"')))
    assert grammar in ("A", "BB")


@pytest.mark.asyncio
async def test_bad_grammar_is_the_requests_mistake(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be compiled"):
        await generate(engine, chat(Guide(GuideKind.GRAMMAR, "root ::= (")))


@pytest.mark.asyncio
async def test_forced_tool_call_is_valid(engine: TransformersEngine) -> None:
    plan = tool_plan([WEATHER], "required", None)
    assert plan is not None
    text = await generate(engine, chat(plan.guide(), tools_json=plan.tools_json()))
    answer = parse_whole(plan, text)
    assert [c.name for c in answer.calls] and {c.name for c in answer.calls} == {"get_weather"}
    assert all("city" in json.loads(c.arguments) for c in answer.calls)


@pytest.mark.asyncio
async def test_template_with_tools_renders_them_and_the_calls(
    model_dir: Path, tmp_path: Path
) -> None:
    hermes_dir = tmp_path / "hermes"
    shutil.copytree(model_dir, hermes_dir)
    (hermes_dir / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    config = json.loads((hermes_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (hermes_dir / "tokenizer_config.json").write_text(json.dumps(config))
    eng = await TransformersEngine.load(hermes_dir, "hermes-tiny")
    plain = await TransformersEngine.load(model_dir, DEFAULT_MODEL_NAME)
    try:
        call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
        messages = (
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
        )
        request = GenerationRequest("t", SamplingParams(), messages=messages, tools_json="[1]")
        tools = json.dumps([WEATHER])
        request = GenerationRequest("t", SamplingParams(), messages=messages, tools_json=tools)
        assert eng._tokenizer is not None and plain._tokenizer is not None
        rendered = eng._tokenizer.decode(eng._prompt_ids(request))
        assert '<tools>{"type": "function"' in rendered
        assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
        # The tiny model's own ChatML template has no tools: they go into a system turn in
        # Hermes' words, the calls into the assistant's text, in the format parsed back.
        fallback = plain._tokenizer.decode(plain._prompt_ids(request))
        assert "<tools>" in fallback and "get_weather" in fallback
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in fallback
    finally:
        await eng.shutdown()
        await plain.shutdown()
