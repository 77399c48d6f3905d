"""Tool calling: the request's tools and tool_choice as one :class:`ToolPlan`.

As vLLM does it: the chat template renders the tools (``tools_json``); with
``tool_choice`` "auto" the model decides and its text is read by the Hermes parser
(:mod:`openai_compat.tool_parser`); "required" and a named function force the call by
structured decoding on a JSON schema built from the tools (:meth:`ToolPlan.guide`, the
schemas of vLLM's ``get_json_schema_from_tools``), so even a model that never saw a tool
returns a valid call; "none" renders and parses nothing. Domain only (no protobuf).
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openai_compat.structured import MAX_GUIDE_BYTES, Guide
from runtime.errors import InvalidArgumentError

MAX_TOOLS = 128
# OpenAI's rule for function names.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_OBJECT: Mapping[str, Any] = {"type": "object", "properties": {}}


class ToolChoice(enum.StrEnum):
    """How the model may call tools ("none" is no plan at all)."""

    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True)
class FunctionTool:
    """One function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's (and the chat templates') dict."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or an assistant turn sent back): ``arguments`` is the JSON
    text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class TurnTools:
    """The tool fields of one chat message: an assistant turn's calls, or the id of the
    call a tool turn answers."""

    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class ToolPlan:
    """The tools of a request and how they may be called. ``forced``: the function a
    named tool_choice calls; ``parallel``: more than one call per answer allowed."""

    tools: tuple[FunctionTool, ...]
    choice: ToolChoice
    forced: str = ""
    parallel: bool = True

    def tools_json(self) -> str:
        """OpenAI's tools list as JSON text: what the chat template renders."""
        return json.dumps([t.openai() for t in self.tools], separators=(",", ":"))

    def guide(self) -> Guide | None:
        """The structured-output schema that forces the call: the named function's
        arguments, or (required) a list of {"name", "parameters"} objects."""
        if self.choice is ToolChoice.NAMED:
            tool = next(t for t in self.tools if t.name == self.forced)
            return Guide.json_schema(tool.parameters or _EMPTY_OBJECT)
        if self.choice is ToolChoice.REQUIRED:
            schema: dict[str, Any] = {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "anyOf": [_call_schema(t) for t in self.tools]},
            }
            if not self.parallel:
                schema["maxItems"] = 1
            return Guide.json_schema(schema)
        return None


def _call_schema(tool: FunctionTool) -> dict[str, Any]:
    return {
        "properties": {
            "name": {"type": "string", "enum": [tool.name]},
            "parameters": dict(tool.parameters or _EMPTY_OBJECT),
        },
        "required": ["name", "parameters"],
    }


def new_call_id() -> str:
    """A tool call id in OpenAI's style."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _function_tool(index: int, tool: Any) -> FunctionTool:
    field = f"tools[{index}]"
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise InvalidArgumentError(f"{field}.type: only function tools are supported")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise InvalidArgumentError(f"{field}.function: is required")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"{field}.function.name: 1 to 64 letters, digits, underscores or dashes"
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise InvalidArgumentError(f"{field}.function.parameters: must be a JSON schema object")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise InvalidArgumentError(f"{field}.function.description: must be a string")
    return FunctionTool(name, description, parameters)


def _choice(tool_choice: Any, names: Sequence[str]) -> tuple[ToolChoice | None, str]:
    """(mode, forced name); mode None for "none"."""
    if tool_choice in (None, "auto"):
        return ToolChoice.AUTO, ""
    if tool_choice == "none":
        return None, ""
    if tool_choice == "required":
        return ToolChoice.REQUIRED, ""
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(name, str):
            raise InvalidArgumentError(
                'tool_choice: must be {"type": "function", "function": {"name": ...}}'
            )
        if name not in names:
            raise InvalidArgumentError(f"tool_choice.function.name: no tool is named {name!r}")
        return ToolChoice.NAMED, name
    raise InvalidArgumentError("tool_choice: must be none, auto, required or a named function")


def tool_plan(tools: Any, tool_choice: Any, parallel_tool_calls: bool | None) -> ToolPlan | None:
    """The validated plan of a request's tool fields (None: no tools in play)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidArgumentError("tool_choice: needs tools")
        return None
    if not isinstance(tools, list):
        raise InvalidArgumentError("tools: must be a list")
    if len(tools) > MAX_TOOLS:
        raise InvalidArgumentError(f"tools: at most {MAX_TOOLS} tools, got {len(tools)}")
    functions = tuple(_function_tool(i, t) for i, t in enumerate(tools))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidArgumentError("tools: function names must be unique")
    mode, forced = _choice(tool_choice, names)
    if mode is None:
        return None
    plan = ToolPlan(functions, mode, forced, parallel_tool_calls is not False)
    if len(plan.tools_json().encode()) > MAX_GUIDE_BYTES:
        raise InvalidArgumentError(f"tools: at most {MAX_GUIDE_BYTES} bytes of definitions")
    return plan


def combined_guide(plan: ToolPlan | None, guide: Guide | None) -> Guide | None:
    """The constraint the engine enforces: a forced call's schema or the requested
    structured output. A forced call is a structured output itself: it cannot follow a
    second one."""
    forced = plan.guide() if plan is not None else None
    if forced is None:
        return guide
    if guide is not None:
        raise InvalidArgumentError(
            "tool_choice: a required or named tool call cannot be combined with"
            " response_format or structured outputs"
        )
    return forced


def message_tool_calls(index: int, calls: Any) -> tuple[ToolCall, ...]:
    """The tool calls of ``messages[index]`` (an assistant turn sent back)."""
    if not calls:
        return ()
    field = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidArgumentError(f"{field}: must be a list")
    parsed = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InvalidArgumentError(f"{field}[{i}].function.name: is required")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        parsed.append(ToolCall(str(call.get("id") or ""), function["name"], arguments))
    return tuple(parsed)
