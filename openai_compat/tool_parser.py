"""Reading tool calls out of generated text, as it streams (and whole, the same way).

Three formats, by :class:`~openai_compat.tools.ToolChoice`:

* auto: Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
  (vLLM's hermes parser; Qwen, Hermes and SmolLM2's tool-trained checkpoints use it; the
  worker shows templates without tools the same format). Text outside the blocks is
  content; a block that is not valid JSON stays content.
* required: the JSON array ``[{"name": ..., "parameters": {...}}, ...]`` that the forcing
  schema allows; each call goes out once its object is complete.
* named: the whole output is the arguments object of the named function; it streams as
  argument pieces.

Every call goes out as OpenAI's deltas: the first with id, type and function.name
(arguments ""), then pieces of function.arguments. A whole answer is the same deltas
assembled (:func:`parse_whole`), so streamed and unary answers never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from openai_compat.tools import ToolCall, ToolChoice, ToolPlan, new_call_id

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"


@dataclass(frozen=True)
class CallDelta:
    """A part of one tool call: ``id`` and ``name`` on its first delta only."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass
class ParsedDelta:
    """What a piece of generated text adds to the message."""

    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)


class ToolStreamParser:
    """Turns a generation's text pieces into content and tool-call deltas."""

    def __init__(self, plan: ToolPlan, new_id: Callable[[], str] = new_call_id) -> None:
        self._plan = plan
        self._new_id = new_id
        self._buffer = ""
        self._calls = 0
        self._inside = False  # auto: within a <tool_call> block

    @property
    def called(self) -> bool:
        """Whether any tool call went out."""
        return self._calls > 0

    def feed(self, text: str) -> ParsedDelta:
        """The deltas ``text`` completes (some text may be held back until it is known
        whether it starts a call)."""
        if self._plan.choice is ToolChoice.NAMED:
            return self._named(text)
        self._buffer += text
        if self._plan.choice is ToolChoice.REQUIRED:
            return self._required(final=False)
        return self._auto(final=False)

    def finish(self) -> ParsedDelta:
        """Whatever is still held back, at the end of the generation."""
        if self._plan.choice is ToolChoice.NAMED:
            return self._named("") if not self.called else ParsedDelta()
        if self._plan.choice is ToolChoice.REQUIRED:
            return self._required(final=True)
        return self._auto(final=True)

    def _call(self, name: str, arguments: str) -> list[CallDelta]:
        index = self._calls
        self._calls += 1
        first = CallDelta(index, "", id=self._new_id(), name=name)
        return [first, CallDelta(index, arguments)] if arguments else [first]

    def _named(self, text: str) -> ParsedDelta:
        if not self.called:
            deltas = self._call(self._plan.forced, text)
            return ParsedDelta(calls=deltas)
        return ParsedDelta(calls=[CallDelta(0, text)] if text else [])

    def _required(self, *, final: bool) -> ParsedDelta:
        """Calls of the array whose objects are complete; at the end, text that is no
        such array (cut by max_tokens) is content."""
        out = ParsedDelta()
        decoder = json.JSONDecoder()
        while True:
            rest = self._buffer.lstrip()
            if rest[:1] in ("[", ","):
                rest = rest[1:].lstrip()
            try:
                item, end = decoder.raw_decode(rest)
            except json.JSONDecodeError:
                break
            call = _call_of(item, "parameters")
            if call is None:
                break
            out.calls += self._call(*call)
            self._buffer = rest[end:]
        if final:
            leftover = self._buffer.strip()
            if leftover not in ("", "]") and not self.called:
                out.content = self._buffer
            self._buffer = ""
        return out

    def _auto(self, *, final: bool) -> ParsedDelta:
        out = ParsedDelta()
        while True:
            if not self._inside:
                start = self._buffer.find(CALL_START)
                if start < 0:
                    keep = 0 if final else _partial_suffix(self._buffer, CALL_START)
                    out.content += self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                out.content += self._buffer[:start]
                self._buffer = self._buffer[start + len(CALL_START) :]
                self._inside = True
            end = self._buffer.find(CALL_END)
            if end < 0 and not final:
                return out
            body = self._buffer if end < 0 else self._buffer[:end]
            self._buffer = "" if end < 0 else self._buffer[end + len(CALL_END) :]
            self._inside = False
            call = _json_call(body)
            if call is None:
                out.content += CALL_START + body + ("" if end < 0 else CALL_END)
            else:
                out.calls += self._call(*call)
            if end < 0:
                return out


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could begin ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _json_call(body: str) -> tuple[str, str] | None:
    try:
        item = json.loads(body)
    except json.JSONDecodeError:
        return None
    return _call_of(item, "arguments")


def _call_of(item: object, arguments_key: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a decoded call object, None if it is none."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    arguments = item.get(arguments_key, item.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return item["name"], text


@dataclass(frozen=True)
class ParsedAnswer:
    """A whole answer: its content (None when it is only tool calls) and calls."""

    content: str | None
    calls: tuple[ToolCall, ...]


def assemble(deltas: list[ParsedDelta]) -> ParsedAnswer:
    """The message that ``deltas`` add up to (what a streaming client reassembles)."""
    content = "".join(d.content for d in deltas)
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for delta in deltas:
        for call in delta.calls:
            if call.id is not None:
                ids[call.index] = call.id
                names[call.index] = call.name or ""
            arguments.setdefault(call.index, []).append(call.arguments)
    calls = tuple(ToolCall(ids[i], names[i], "".join(arguments[i])) for i in sorted(ids))
    if calls and not content.strip():
        return ParsedAnswer(None, calls)
    return ParsedAnswer(content, calls)


def parse_whole(plan: ToolPlan, text: str) -> ParsedAnswer:
    """A whole generation's content and tool calls."""
    parser = ToolStreamParser(plan)
    return assemble([parser.feed(text), parser.finish()])


def finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's finish_reason: "tool_calls" when the model ended its turn with calls."""
    return "tool_calls" if called and reason == "stop" else reason
