"""A request's prompt as token ids, the same in both engines (:func:`prompt_token_ids`),
and what a chat template gets: the conversation as dicts and the tools.

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
from typing import Any, cast

from runtime.errors import InvalidArgumentError
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


def prompt_token_ids(
    tokenizer: Any, request: GenerationRequest, *, model_name: str, vocab_size: int
) -> list[int]:
    """The token ids of ``request``'s prompt: the chat template applied to its messages,
    its text tokenised with the tokenizer's own special tokens (bos if it adds one), or
    its ids as given. Blocking (tokenizing costs in proportion to the text): engines call
    it off the event loop, short texts aside (prompt_bounds.PromptLimits). The request's
    mistakes are InvalidArgumentError, ids outside the ``vocab_size`` the model can read
    included."""
    inputs = (request.prompt, request.messages, request.prompt_token_ids)
    if sum(i is not None for i in inputs) != 1:
        raise InvalidArgumentError(
            "exactly one of prompt, prompt_token_ids and messages must be set"
        )
    if request.prompt_token_ids is not None:
        ids = list(request.prompt_token_ids)
    elif request.messages is not None:
        ids = _render_messages(tokenizer, request, model_name)
    else:
        ids = _tokenize(tokenizer, request.prompt or "", model_name)
    if not ids:
        raise InvalidArgumentError("prompt must not be empty")
    # Ids the model has no embedding for (a tokenizer with more added tokens than the
    # model's vocabulary) would fail the forward step as if the engine were broken.
    if max(ids) >= vocab_size or min(ids) < 0:
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise InvalidArgumentError(
            f"the {'messages' if request.messages is not None else 'prompt'} tokenize to"
            f" id {bad}, outside the vocabulary of {model_name!r} ({vocab_size} tokens)"
        )
    return ids


def _render_messages(tokenizer: Any, request: GenerationRequest, model_name: str) -> list[int]:
    if not request.messages:
        raise InvalidArgumentError("messages must not be empty")
    if tokenizer.chat_template is None:
        raise InvalidArgumentError(
            f"model {model_name!r} has no chat template; send a prompt instead of messages"
        )
    conversation, extra = template_inputs(request, tokenizer.chat_template)
    try:
        rendered = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False, **extra
        )
    except Exception as exc:
        # Templates reject conversations they cannot render (raise_exception in the
        # Jinja source, e.g. roles out of order): that is the caller's input.
        raise InvalidArgumentError(
            f"messages cannot be rendered with the chat template of {model_name!r}: {exc}"
        ) from exc
    # tokenize=True with return_dict=False returns the flat list of token ids.
    return [int(i) for i in cast("list[int]", rendered)]


def _tokenize(tokenizer: Any, prompt: str, model_name: str) -> list[int]:
    try:
        encoded = tokenizer(prompt)["input_ids"]
    except MemoryError:
        raise
    except Exception as exc:
        # The tokenizer refused this text: the request's fault, not the engine's.
        raise InvalidArgumentError(
            f"prompt cannot be tokenized by {model_name!r}: {type(exc).__name__}"
        ) from exc
    return [int(i) for i in encoded]
