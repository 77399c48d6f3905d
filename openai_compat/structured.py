"""Structured outputs: what a request asks the output to follow, as one :class:`Guide`.

OpenAI's ``response_format`` (json_object, json_schema), vLLM's ``structured_outputs``
(json, regex, choice, grammar, json_object) and older vLLM's ``guided_json`` /
``guided_regex`` / ``guided_choice`` / ``guided_grammar`` all become the same constraint,
which the engine enforces while it samples (worker/engine/grammar.py for the reference
engine, vLLM's own structured outputs for vLLM). At most one may be given, as in vLLM.
Domain only (no protobuf); every rejection names the field.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgumentError

# A schema, regular expression or grammar bigger than this is refused before anything
# compiles it (grammar compilation is superlinear in the worst case).
MAX_GUIDE_BYTES = 64 * 1024
MAX_CHOICES = 256


class GuideKind(enum.StrEnum):
    """What a :class:`Guide`'s spec is."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    CHOICE = "choice"
    GRAMMAR = "grammar"


@dataclass(frozen=True)
class Guide:
    """A constraint on the output: ``spec`` is a JSON schema's text, a regular expression
    or an EBNF grammar (empty for json_object); ``choices`` the allowed outputs of a
    choice guide."""

    kind: GuideKind
    spec: str = ""
    choices: tuple[str, ...] = ()

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any]) -> Guide:
        return cls(GuideKind.JSON_SCHEMA, json.dumps(schema, separators=(",", ":")))


@dataclass(frozen=True)
class GuideFields:
    """The structured-output fields of a request, as decoded JSON (None where absent)."""

    response_format: Mapping[str, Any] | None = None
    structured_outputs: Mapping[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


def _sized(field: str, text: str) -> str:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_GUIDE_BYTES:
        raise InvalidArgumentError(f"{field}: at most {MAX_GUIDE_BYTES} bytes")
    return text


def _schema_guide(field: str, schema: Any) -> Guide:
    """A JSON-schema guide from a schema object or its JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(_sized(field, schema))
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{field}: is not valid JSON ({exc.msg})") from None
    if not isinstance(schema, Mapping):
        raise InvalidArgumentError(f"{field}: must be a JSON schema object")
    guide = Guide.json_schema(schema)
    _sized(field, guide.spec)
    return guide


def _text_guide(field: str, kind: GuideKind, text: Any) -> Guide:
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"{field}: must be a non-empty string")
    return Guide(kind, _sized(field, text))


def _choice_guide(field: str, choices: Any) -> Guide:
    if not isinstance(choices, list) or not choices:
        raise InvalidArgumentError(f"{field}: must be a non-empty list of strings")
    if len(choices) > MAX_CHOICES:
        raise InvalidArgumentError(f"{field}: at most {MAX_CHOICES} choices")
    if not all(isinstance(c, str) and c for c in choices):
        raise InvalidArgumentError(f"{field}: every choice must be a non-empty string")
    _sized(field, "".join(choices))
    return Guide(GuideKind.CHOICE, choices=tuple(choices))


def _response_format_guide(response_format: Mapping[str, Any]) -> Guide | None:
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide(GuideKind.JSON_OBJECT)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is None:
            raise InvalidArgumentError("response_format.json_schema.schema: is required")
        return _schema_guide("response_format.json_schema.schema", schema)
    raise InvalidArgumentError(
        "response_format.type: must be one of text, json_object, json_schema"
    )


_REFUSED_OPTIONS = ("whitespace_pattern", "structural_tag")


def _structured_outputs_guide(options: Mapping[str, Any]) -> Guide:
    for name in _REFUSED_OPTIONS:
        if options.get(name) is not None:
            raise InvalidArgumentError(f"structured_outputs.{name}: is not supported")
    guides = []
    if options.get("json") is not None:
        guides.append(_schema_guide("structured_outputs.json", options["json"]))
    if options.get("regex") is not None:
        guides.append(_text_guide("structured_outputs.regex", GuideKind.REGEX, options["regex"]))
    if options.get("choice"):
        guides.append(_choice_guide("structured_outputs.choice", options["choice"]))
    if options.get("grammar") is not None:
        guides.append(
            _text_guide("structured_outputs.grammar", GuideKind.GRAMMAR, options["grammar"])
        )
    if options.get("json_object"):
        guides.append(Guide(GuideKind.JSON_OBJECT))
    if len(guides) != 1:
        raise InvalidArgumentError(
            "structured_outputs: exactly one of json, regex, choice, grammar, json_object"
            f" must be set, got {len(guides)}"
        )
    return guides[0]


def guide_from(fields: GuideFields) -> Guide | None:
    """The one constraint the request's fields ask for (None: free text). Two fields that
    both constrain the output are refused, naming both."""
    found: list[tuple[str, Guide]] = []
    if fields.response_format is not None:
        guide = _response_format_guide(fields.response_format)
        if guide is not None:
            found.append(("response_format", guide))
    if fields.structured_outputs is not None:
        found.append(("structured_outputs", _structured_outputs_guide(fields.structured_outputs)))
    if fields.guided_json is not None:
        found.append(("guided_json", _schema_guide("guided_json", fields.guided_json)))
    if fields.guided_regex is not None:
        found.append(
            ("guided_regex", _text_guide("guided_regex", GuideKind.REGEX, fields.guided_regex))
        )
    if fields.guided_choice:
        found.append(("guided_choice", _choice_guide("guided_choice", fields.guided_choice)))
    if fields.guided_grammar is not None:
        grammar = _text_guide("guided_grammar", GuideKind.GRAMMAR, fields.guided_grammar)
        found.append(("guided_grammar", grammar))
    if len(found) > 1:
        raise InvalidArgumentError(
            f"{found[1][0]}: only one structured-output constraint is allowed"
            f" ({found[0][0]} is set too)"
        )
    return found[0][1] if found else None
