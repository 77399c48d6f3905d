"""Tool calling and structured outputs between inference.proto and the domain values of
:mod:`openai_compat.tools`, :mod:`openai_compat.structured` and
:mod:`openai_compat.tool_parser`: the request's fields in, the answer's tool calls out
(whole messages and streamed deltas)."""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb

from openai_compat.json_values import message_json
from openai_compat.params import Job, Request
from openai_compat.structured import GuideFields, guide_from
from openai_compat.tool_parser import ParsedDelta, ToolStreamParser, finish_reason, parse_whole
from openai_compat.tools import TurnTools, combined_guide, message_tool_calls, tool_plan


def plain_json(value: Any) -> Any:
    """A decoded Struct/Value with its whole numbers as ints again (protobuf's JSON keeps
    every number as a double: a schema's ``"maxLength": 8`` would come back as 8.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def _json(message: Message, name: str) -> Any:
    """A message-typed field as plain JSON (None when absent or null)."""
    if not message.HasField(name):
        return None
    return plain_json(message_json(name, getattr(message, name), proto_names=True))


def _guide_fields(params: pb.ChatCompletionParams) -> GuideFields:
    return GuideFields(
        response_format=_json(params, "response_format"),
        structured_outputs=_json(params, "structured_outputs"),
        guided_json=_json(params, "guided_json"),
        guided_regex=params.guided_regex if params.HasField("guided_regex") else None,
        guided_choice=list(params.guided_choice) or None,
        guided_grammar=params.guided_grammar if params.HasField("guided_grammar") else None,
    )


def _turn_tools(params: pb.ChatCompletionParams) -> tuple[TurnTools, ...]:
    turns = []
    for index, message in enumerate(params.messages):
        calls = [
            message_json(f"messages[{index}].tool_calls", c, proto_names=True)
            for c in message.tool_calls
        ]
        turns.append(TurnTools(message_tool_calls(index, calls), message.tool_call_id))
    return tuple(turns) if any(t.tool_calls or t.tool_call_id for t in turns) else ()


def with_chat_tools(request: Request, params: pb.ChatCompletionParams) -> Request:
    """``request`` with the tools, tool choice and structured output its body asks for,
    on every choice's job. (``functions`` and ``function_call`` are refused by the field
    table, openai_compat.fields.)"""
    tool_choice = _json(params, "tool_choice")
    parallel = params.parallel_tool_calls if params.HasField("parallel_tool_calls") else None
    tools = [_tool_json(index, t) for index, t in enumerate(params.tools)]
    plan = tool_plan(tools, tool_choice, parallel)
    guide = combined_guide(plan, guide_from(_guide_fields(params)))
    turns = _turn_tools(params)
    if plan is None and guide is None and not turns:
        return request
    jobs = tuple(
        dataclasses.replace(
            job,
            sampling=dataclasses.replace(job.sampling, guide=guide),
            tools=plan,
            turn_tools=turns,
        )
        for job in request.jobs
    )
    return dataclasses.replace(request, jobs=jobs)


def _tool_json(index: int, tool: pb.Tool) -> dict[str, Any]:
    value: dict[str, Any] = plain_json(message_json(f"tools[{index}]", tool, proto_names=True))
    return value


def chat_choice_with_tools(job: Job, choice: pb.ChatCompletionChoice) -> pb.ChatCompletionChoice:
    """A whole answer's ``choice`` with its text read as content and tool calls (as the
    job's tool choice says); unchanged without tools."""
    if job.tools is None:
        return choice
    answer = parse_whole(job.tools, choice.message.content)
    if answer.content is None:
        choice.message.ClearField("content")
    else:
        choice.message.content = answer.content
    for call in answer.calls:
        choice.message.tool_calls.add(
            id=call.id,
            type="function",
            function=pb.FunctionCall(name=call.name, arguments=call.arguments),
        )
    reason = finish_reason(choice.finish_reason, bool(answer.calls))
    if reason is not None:
        choice.finish_reason = reason
    return choice


class ChatToolDeltas:
    """A chat stream's choices read as content and tool-call deltas (one parser per
    choice); choices of a request without tools pass unchanged."""

    def __init__(self, request: Request) -> None:
        self._parsers = {
            job.index: ToolStreamParser(job.tools) for job in request.jobs if job.tools is not None
        }

    def parses(self, index: int) -> bool:
        """Whether choice ``index``'s text is parsed for tool calls (may be rewritten)."""
        return index in self._parsers

    def rewrite(self, choice: pb.ChatCompletionChunkChoice) -> pb.ChatCompletionChunkChoice:
        """``choice`` (one stream chunk's) with its text parsed: held-back text leaves its
        content, complete calls join its delta.tool_calls, "stop" becomes "tool_calls"."""
        parser = self._parsers.get(choice.index)
        if parser is None:
            return choice
        parsed = parser.feed(choice.delta.content)
        ended = choice.HasField("finish_reason")
        if ended:
            tail = parser.finish()
            parsed = ParsedDelta(parsed.content + tail.content, parsed.calls + tail.calls)
        if parsed.content:
            choice.delta.content = parsed.content
        else:
            choice.delta.ClearField("content")
        for call in parsed.calls:
            delta = choice.delta.tool_calls.add(index=call.index)
            if call.id is not None:
                delta.id = call.id
                delta.type = "function"
                delta.function.name = call.name or ""
            delta.function.arguments = call.arguments
        if ended:
            reason = finish_reason(choice.finish_reason, parser.called)
            if reason is not None:
                choice.finish_reason = reason
        return choice
