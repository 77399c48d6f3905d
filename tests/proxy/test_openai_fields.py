"""The table of OpenAI request fields (openai_compat/fields.py): it covers exactly the
fields the contracts declare, the README holds it as printed, and the catch-all refuses
what it says it refuses (domain; tests/e2e/test_openai_fields_e2e.py sends each field
through Envoy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helios.v1 import inference_pb2 as pb

from openai_compat.fields import (
    CHAT_FIELDS,
    ENDPOINTS,
    Support,
    check_fields,
    check_message_fields,
    markdown_table,
)
from runtime.errors import InvalidArgumentError

README = Path(__file__).resolve().parents[2] / "README.md"
MESSAGES = {
    "chat": pb.ChatCompletionParams,
    "completions": pb.CompletionParams,
    "embeddings": pb.EmbeddingParams,
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_the_table_lists_exactly_the_fields_the_contract_declares(endpoint: str) -> None:
    declared = {f.name for f in MESSAGES[endpoint].DESCRIPTOR.fields}
    listed = [rule.name for rule in ENDPOINTS[endpoint]]
    assert len(listed) == len(set(listed)), "a field is listed twice"
    assert set(listed) == declared


def test_the_readme_holds_the_table_as_printed() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- openai-fields:begin -->\n(.*?)<!-- openai-fields:end -->", text, re.S)
    assert found, "README.md lost its field table markers"
    assert found.group(1) == markdown_table(), "run: python -m openai_compat.fields"


@pytest.mark.parametrize(
    "rule", [r for r in CHAT_FIELDS if r.support is Support.REFUSED], ids=lambda r: r.name
)
def test_a_refused_field_is_a_400_naming_it(rule: object) -> None:
    name = rule.name  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgumentError, match=rf"^{name}: is not supported"):
        check_fields("chat", {name: rule.example})  # type: ignore[attr-defined]


def test_harmless_values_of_refused_fields_pass() -> None:
    check_fields("chat", {"store": False, "service_tier": "auto", "modalities": ["text"]})
    with pytest.raises(InvalidArgumentError, match=r"^modalities"):
        check_fields("chat", {"modalities": ["text", "audio"]})


def test_supported_and_ignored_fields_pass_and_unlisted_ones_do_not() -> None:
    check_fields(
        "completions",
        {r.name: r.example for r in ENDPOINTS["completions"] if r.support is not Support.REFUSED},
    )
    with pytest.raises(InvalidArgumentError, match=r"^brand_new_field: is not supported"):
        check_fields("chat", {"brand_new_field": 1})
    check_message_fields(0, ["role", "content", "tool_calls"])
    with pytest.raises(InvalidArgumentError, match=r"^messages\[2\]\.refusal"):
        check_message_fields(2, ["role", "refusal"])
