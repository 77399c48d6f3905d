"""What a chat template gets: the conversation as dicts and the tools (both engines).

A template that knows tools (it reads ``tools`` and ``tool_calls``: Hermes, Qwen, Llama
3.1, ...) renders them itself. One that does not (SmolLM2-135M-Instruct's and the tiny
model's plain ChatML) would drop them silently, so the model could neither see the tools
nor its earlier calls: then the tools go into the system turn in Hermes' words and an
assistant turn's calls into its text as ``<tool_call>`` blocks, the format
openai_compat.tool_parser reads back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.engine.base import ChatMessage, GenerationRequest

_HERMES_TOOLS_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures"
    " within <tools></tools> XML tags. You may call one or more functions to assist with"
    " the user query. Don't make assumptions about what values to plug into functions."
    " Here are the available tools: <tools>{tools}</tools> For each function call return"
    " a json object with function name and arguments within <tool_call></tool_call> XML"
    ' tags as follows:\n<tool_call>\n{{"name": <function-name>, "arguments":'
    " <args-dict>}}\n</tool_call>"
)


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template's source reads the tools it is given."""
    return template is not None and "tools" in template and "tool_call" in template


def _arguments(text: str) -> Any:
    """A call's arguments as templates expect them (a dict; the text if it is no JSON)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _hermes_calls(message: ChatMessage) -> str:
    return "".join(
        "<tool_call>\n"
        + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)})
        + "\n</tool_call>"
        for c in message.tool_calls
    )


def _turn(message: ChatMessage, native: bool) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls and native:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c.arguments)},
            }
            for c in message.tool_calls
        ]
    elif message.tool_calls:
        turn["content"] = message.content + _hermes_calls(message)
    if message.tool_call_id:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def template_inputs(
    request: GenerationRequest, template: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(conversation, extra keyword arguments) for ``apply_chat_template``."""
    messages: Sequence[ChatMessage] = request.messages or ()
    native = template_renders_tools(template)
    conversation = [_turn(m, native) for m in messages]
    if not request.tools_json:
        return conversation, {}
    if native:
        return conversation, {"tools": json.loads(request.tools_json)}
    prompt = _HERMES_TOOLS_PROMPT.format(tools=request.tools_json)
    if conversation and conversation[0]["role"] == "system":
        first = conversation[0]
        conversation[0] = {**first, "content": f"{first['content']}\n\n{prompt}"}
    else:
        conversation.insert(0, {"role": "system", "content": prompt})
    return conversation, {}
