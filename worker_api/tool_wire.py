"""WorkerService's structured-output and tool fields <-> the domain values of
:mod:`openai_compat.structured` and :mod:`openai_compat.tools` (SamplingParams.guide,
ChatPrompt.tools_json, PromptMessage.tool_calls / tool_call_id), for the proxy that sends
a job and the worker that receives it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from helios.v1 import worker_pb2 as pb

from openai_compat.params import Job
from openai_compat.structured import Guide, GuideKind
from openai_compat.tools import ToolCall, TurnTools
from runtime.errors import InvalidArgumentError

_KINDS = {
    GuideKind.JSON_SCHEMA: pb.GUIDE_KIND_JSON_SCHEMA,
    GuideKind.JSON_OBJECT: pb.GUIDE_KIND_JSON_OBJECT,
    GuideKind.REGEX: pb.GUIDE_KIND_REGEX,
    GuideKind.CHOICE: pb.GUIDE_KIND_CHOICE,
    GuideKind.GRAMMAR: pb.GUIDE_KIND_GRAMMAR,
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}


def guide_to_pb(guide: Guide | None) -> pb.Guide | None:
    """SamplingParams.guide for ``guide`` (None: leave it unset)."""
    if guide is None:
        return None
    return pb.Guide(kind=_KINDS[guide.kind], spec=guide.spec, choices=guide.choices)


def guide_from_pb(sampling: pb.SamplingParams) -> Guide | None:
    """The guide a GenerateRequest's sampling carries (None: unset)."""
    if not sampling.HasField("guide"):
        return None
    kind = _KINDS_BACK.get(sampling.guide.kind)
    if kind is None:
        raise InvalidArgumentError("sampling.guide.kind: must be set")
    return Guide(kind, sampling.guide.spec, tuple(sampling.guide.choices))


def chat_to_pb(job: Job, chat: pb.ChatPrompt) -> None:
    """Fill ``chat`` with ``job``'s turns, their tool fields and the tools to render."""
    assert job.messages is not None
    turns = job.turn_tools or (TurnTools(),) * len(job.messages)
    for (role, content), turn in zip(job.messages, turns, strict=True):
        chat.messages.add(
            role=role,
            content=content,
            tool_calls=[
                pb.PromptToolCall(id=c.id, name=c.name, arguments=c.arguments)
                for c in turn.tool_calls
            ],
            tool_call_id=turn.tool_call_id,
        )
    if job.tools is not None:
        chat.tools_json = job.tools.tools_json()


def turn_tools_from_pb(messages: Sequence[pb.PromptMessage]) -> Iterable[TurnTools]:
    """Each PromptMessage's tool fields."""
    for m in messages:
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls)
        yield TurnTools(calls, m.tool_call_id)
