"""What Helios does with every field of OpenAI's chat, completions and embeddings requests.

The one definition behind three things: the catch-all that refuses a field (400 naming it)
before anything is generated, the README's table (``python -m openai_compat.fields``
prints it; tests/e2e checks the README holds it), and the e2e test that sends each field
through Envoy and checks the answer against the table. A field is either

* ``supported``: it works (its values are validated in :mod:`openai_compat.params`);
* ``ignored``: accepted and without effect, because ignoring it changes nothing the client
  relies on (an end-user id, a caching hint, stored-completion tags);
* ``refused``: a 400 naming the field whenever it is sent with a value other than null
  (or other than the harmless values ``accepts`` lets through, e.g. ``modalities:
  ["text"]``).

A field set on the request message that this table does not list is refused as well: a
new field declared in the proto cannot be dropped silently before its behaviour is
written here. Fields OpenAI does not define never reach this module (Envoy's transcoder
drops what the proto does not declare, as vLLM ignores them). Domain only (no protobuf).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgumentError


class Support(enum.StrEnum):
    """What happens to a field."""

    SUPPORTED = "supported"
    IGNORED = "ignored"
    REFUSED = "refused (400)"


@dataclass(frozen=True)
class FieldRule:
    """One request field: what Helios does with it, why, and (for a refused field) which
    values are harmless enough to accept anyway. ``example`` is a value a client could
    send (the e2e test sends it)."""

    name: str
    support: Support
    note: str
    example: Any
    accepts: Callable[[Any], bool] | None = None


def _text_only(value: Any) -> bool:
    return isinstance(value, list) and all(v == "text" for v in value)


def _false(value: Any) -> bool:
    return value is False


def _standard_tier(value: Any) -> bool:
    return value in ("auto", "default")


S, IG, R = Support.SUPPORTED, Support.IGNORED, Support.REFUSED
_VLLM = "vLLM's extension"
_FORCED = "forced by structured decoding on a schema built from the tools"
_GUIDED = "older vLLM's name; same as structured_outputs"

# Fields both endpoints have, in OpenAI's order of importance.
_SHARED: tuple[FieldRule, ...] = (
    FieldRule("model", S, "the model id", "MODEL"),
    FieldRule("max_tokens", S, ">= 1", 4),
    FieldRule("temperature", S, "[0, 2]; 0 is greedy", 0.5),
    FieldRule("top_p", S, "(0, 1]", 0.9),
    FieldRule("n", S, "1 to 16 choices, each its own sequence (engines batch them)", 2),
    FieldRule("stop", S, "a string or up to 4", "\n\n"),
    FieldRule("stream", S, "server-sent events", False),
    FieldRule("stream_options", S, "include_usage; include_obfuscation ignored", None),
    FieldRule("seed", S, "reproducible sampling; choice i uses seed + i", 7),
    FieldRule("presence_penalty", S, "[-2, 2]", 0.5),
    FieldRule("frequency_penalty", S, "[-2, 2]", 0.5),
    FieldRule("logit_bias", S, "token id -> [-100, 100], at most 300 entries", {"0": -1}),
    FieldRule("user", IG, "an opaque end-user id", "u-1"),
    FieldRule("top_k", S, _VLLM, 5),
    FieldRule("min_tokens", S, _VLLM + ": no end before this many tokens", 2),
    FieldRule("repetition_penalty", S, _VLLM + ": (0, 10]; 1 disables", 1.1),
    FieldRule("ignore_eos", S, _VLLM, False),
)

CHAT_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("messages", S, "text content (string or text parts)", None),
    *_SHARED,
    FieldRule("max_completion_tokens", S, "wins over max_tokens", 4),
    FieldRule("logprobs", S, "choices[].logprobs.content[], streamed too", True),
    FieldRule("top_logprobs", S, "0 to 20; needs logprobs", 2),
    FieldRule("metadata", IG, "tags for stored completions; nothing is stored", {"k": "v"}),
    FieldRule("store", R, "storing completions is not offered; false is accepted", True, _false),
    FieldRule(
        "service_tier", R, "one tier; 'auto' and 'default' are accepted", "flex", _standard_tier
    ),
    FieldRule("modalities", R, "text output only; ['text'] is accepted", ["audio"], _text_only),
    FieldRule("safety_identifier", IG, "an opaque end-user id", "s-1"),
    FieldRule("prompt_cache_key", IG, "prefix caching is automatic", "k"),
    FieldRule("prompt_cache_retention", IG, "prefix caching is automatic", "24h"),
    FieldRule("prompt_cache_options", IG, "prefix caching is automatic", {"ttl": "1h"}),
    FieldRule("audio", R, "no audio output", {"voice": "alloy", "format": "wav"}),
    FieldRule("prediction", R, "no predicted outputs", {"type": "content", "content": "x"}),
    FieldRule("web_search_options", R, "no web search", {}),
    FieldRule("reasoning_effort", R, "no reasoning budget to set", "low"),
    FieldRule("verbosity", R, "no verbosity control", "low"),
    FieldRule("moderation", R, "no moderation model", {"model": "omni-moderation-latest"}),
    FieldRule(
        "tools",
        S,
        "function tools, rendered by the chat template; calls read in Hermes format",
        [{"type": "function", "function": {"name": "f"}}],
    ),
    FieldRule("tool_choice", S, f"none, auto, required, named; required/named {_FORCED}", "auto"),
    FieldRule("parallel_tool_calls", S, "false: at most one call", True),
    FieldRule("functions", R, "deprecated by OpenAI; send tools", [{"name": "f"}]),
    FieldRule("function_call", R, "deprecated by OpenAI; send tool_choice", "auto"),
    FieldRule(
        "response_format",
        S,
        "text, json_object, json_schema (structured decoding)",
        {"type": "json_object"},
    ),
    FieldRule(
        "structured_outputs",
        S,
        _VLLM + ": one of json, regex, choice, grammar (EBNF), json_object",
        {"choice": ["yes", "no"]},
    ),
    FieldRule("guided_json", S, _GUIDED, {"type": "object"}),
    FieldRule("guided_regex", S, _GUIDED, "[a-z]{1,5}"),
    FieldRule("guided_choice", S, _GUIDED, ["yes", "no"]),
    FieldRule("guided_grammar", S, _GUIDED, 'root ::= "yes" | "no"'),
)

COMPLETION_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("prompt", S, "a string, strings, token ids, lists of token ids", None),
    *_SHARED,
    FieldRule("logprobs", S, "0 to 20: {tokens, token_logprobs, top_logprobs, text_offset}", 2),
    FieldRule("echo", S, "the prompt first (with its logprobs when asked)", True),
    FieldRule("best_of", S, "equal to n only (no engine here ranks extra sequences)", 1),
    FieldRule("suffix", R, "no insertion (as in vLLM)", "x"),
)

# /v1/embeddings has no field to refuse: its message declares only these (Envoy's
# transcoder drops the rest, as vLLM ignores them).
EMBEDDING_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("model", S, "the model id", "MODEL"),
    FieldRule("input", S, "a string, strings, token ids, lists of token ids", "hello"),
    FieldRule("encoding_format", S, "float or base64", "base64"),
    FieldRule(
        "dimensions",
        S,
        "fewer dimensions (truncated, normalised again) where the model allows it"
        " (a Matryoshka model); else 400",
        8,
    ),
    FieldRule("user", IG, "an opaque end-user id", "u-1"),
)

# The fields of a chat message (messages[i]).
MESSAGE_FIELDS: frozenset[str] = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id"}
)

ENDPOINTS: Mapping[str, tuple[FieldRule, ...]] = {
    "chat": CHAT_FIELDS,
    "completions": COMPLETION_FIELDS,
    "embeddings": EMBEDDING_FIELDS,
}
# Each endpoint's column in the README's table.
_COLUMNS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


def check_fields(endpoint: str, present: Mapping[str, Any]) -> None:
    """Refuse the first field of ``present`` (name -> the JSON value the client sent,
    nulls already left out) that the table refuses for that value, or does not list."""
    rules = {rule.name: rule for rule in ENDPOINTS[endpoint]}
    for name, value in present.items():
        rule = rules.get(name)
        if rule is None:
            raise InvalidArgumentError(f"{name}: is not supported")
        if rule.support is Support.REFUSED and not (rule.accepts and rule.accepts(value)):
            raise InvalidArgumentError(f"{name}: is not supported ({rule.note})")


def check_message_fields(index: int, present: Iterable[str]) -> None:
    """Refuse a field of ``messages[index]`` beyond role, content and name."""
    for name in present:
        if name not in MESSAGE_FIELDS:
            raise InvalidArgumentError(f"messages[{index}].{name}: is not supported")


def markdown_table() -> str:
    """The README's table of request fields (one row per field and endpoint)."""
    lines = [
        "| Field | " + " | ".join(_COLUMNS.values()) + " | Notes |",
        "|---|" + "---|" * len(_COLUMNS) + "---|",
    ]
    tables = {endpoint: {r.name: r for r in rules} for endpoint, rules in ENDPOINTS.items()}
    names = dict.fromkeys(name for table in tables.values() for name in table)
    for name in names:
        found = [tables[endpoint].get(name) for endpoint in _COLUMNS]
        cells = [r.support.value if r else "-" for r in found]
        notes = "; ".join(dict.fromkeys(r.note for r in found if r is not None))
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {notes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
