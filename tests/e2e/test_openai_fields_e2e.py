"""Every field of OpenAI's chat and completions requests, sent through Envoy to the real
mesh (the session mesh: `helios up`, the tiny model): a supported or ignored field gets
200, a refused one a 400 whose OpenAI error names it -- nothing is dropped silently. The
table is openai_compat/fields.py (also the README's); /v1/embeddings' five fields are
exercised by tests/e2e/test_embeddings_e2e.py on a mesh that serves an embedding model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.mesh_harness import Mesh

from openai_compat.fields import CHAT_FIELDS, COMPLETION_FIELDS, FieldRule, Support

# Fields another field must come with to be valid on their own terms.
_COMPANIONS: dict[str, dict[str, Any]] = {
    "top_logprobs": {"logprobs": True},
    "tool_choice": {"tools": [{"type": "function", "function": {"name": "f"}}]},
    "parallel_tool_calls": {"tools": [{"type": "function", "function": {"name": "f"}}]},
}
_BASE = {"max_tokens": 4, "temperature": 0}


def _sendable(rules: tuple[FieldRule, ...]) -> list[FieldRule]:
    """The rules with an example to send (not the request's own body: model, messages,
    prompt, stream_options, which every request or other tests exercise)."""
    return [r for r in rules if r.example is not None and r.name != "model"]


def _post(mesh: Mesh, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{mesh.rest_url}{path}", json=body, timeout=60)


def _check(response: httpx.Response, rule: FieldRule) -> None:
    if rule.support is Support.REFUSED:
        assert response.status_code == 400, (rule.name, response.text)
        error = response.json()["error"]
        assert error["message"].startswith(f"{rule.name}: is not supported"), error
        assert error["type"] == "invalid_request_error"
    else:
        assert response.status_code == 200, (rule.name, response.text)


@pytest.mark.parametrize("rule", _sendable(CHAT_FIELDS), ids=lambda r: r.name)
def test_chat_field(mesh: Mesh, rule: FieldRule) -> None:
    body = {
        "model": mesh.model,
        "messages": [{"role": "user", "content": "hello"}],
        **_BASE,
        **_COMPANIONS.get(rule.name, {}),
        rule.name: rule.example,
    }
    _check(_post(mesh, "/chat/completions", body), rule)


@pytest.mark.parametrize("rule", _sendable(COMPLETION_FIELDS), ids=lambda r: r.name)
def test_completions_field(mesh: Mesh, rule: FieldRule) -> None:
    body = {"model": mesh.model, "prompt": "Once upon", **_BASE, rule.name: rule.example}
    _check(_post(mesh, "/completions", body), rule)


def test_models_retrieve_and_list_with_the_openai_sdk(mesh: Mesh) -> None:
    """GET /v1/models/{id} (models.retrieve) and /v1/models: OpenAI's shapes, numbers as
    JSON numbers, ``created`` when the registry first had the model."""
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)
    model = api.models.retrieve(mesh.model)
    assert (model.id, model.object) == (mesh.model, "model")
    assert isinstance(model.created, int) and model.created > 1_600_000_000
    listed = {m.id: m for m in api.models.list()}
    assert listed[mesh.model].created == model.created
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("nobody/nothing")
    raw = httpx.get(f"{mesh.rest_url}/models/{mesh.model}", timeout=30).json()
    assert isinstance(raw["created"], int)
