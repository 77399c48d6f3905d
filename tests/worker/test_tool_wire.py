"""A job's structured-output and tool fields survive WorkerService (the proxy's cold path
and P/D peers): openai_compat job -> GenerateRequest -> the worker's engine request."""

from __future__ import annotations

import dataclasses

from openai_compat.params import Job, Sampling
from openai_compat.structured import Guide, GuideKind
from openai_compat.tools import ToolCall, TurnTools, tool_plan
from worker.inference import generation_request
from worker.servicer import generation_request_from_pb
from worker_api.wire import job_to_pb

WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def test_guide_tools_and_turns_cross_the_wire() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    plan = tool_plan([WEATHER], "auto", None)
    for guide in (
        Guide.json_schema({"type": "object"}),
        Guide(GuideKind.CHOICE, choices=("a", "b")),
        Guide(GuideKind.GRAMMAR, 'root ::= "x"'),
        None,
    ):
        sampling = Sampling(16, 1.0, 1.0, 0, None, (), guide=guide)
        job = Job(
            "r1",
            "m",
            sampling,
            0,
            messages=(("user", "hi"), ("assistant", ""), ("tool", "sunny")),
            tools=plan,
            turn_tools=(TurnTools(), TurnTools((call,)), TurnTools(tool_call_id="call_1")),
        )
        received = generation_request_from_pb(job_to_pb(job))
        local = generation_request(job)
        assert received.sampling.guide == guide == local.sampling.guide
        assert received.messages == local.messages
        assert received.tools_json == local.tools_json == plan.tools_json()  # type: ignore[union-attr]
        assert received.messages is not None and received.messages[1].tool_calls == (call,)
        assert received.messages[2].tool_call_id == "call_1"
    plain = dataclasses.replace(job, tools=None, turn_tools=())
    assert generation_request_from_pb(job_to_pb(plain)).tools_json == ""
