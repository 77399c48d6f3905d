"""Tokens per minute of an API key on the warm path, through real Envoy: the worker
counts the key's tokens, the heartbeat brings them to the control plane, and once the
budget is spent the key's next requests get 429 with Retry-After and an OpenAI error
body, while another key is served as before."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from support.mesh_harness import Mesh, helios_up

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

pytestmark = pytest.mark.e2e

LIMITED, FREE = "limited-key", "free-key"
TOKENS_PER_MINUTE = 60


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root: Path = tmp_path_factory.mktemp("budget-mesh")
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    with helios_up(
        root,
        DEFAULT_MODEL_NAME,
        model_dir,
        "--api-key",
        f"{LIMITED}:0:{TOKENS_PER_MINUTE}",
        "--api-key",
        FREE,
    ) as running:
        yield running


def _client(mesh: Mesh, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.rest_url, api_key=key, max_retries=0, timeout=60)


def test_a_key_that_spent_its_tokens_gets_429_until_its_budget_refills(mesh: Mesh) -> None:
    limited, free = _client(mesh, LIMITED), _client(mesh, FREE)
    spent = 0
    refused: openai.RateLimitError | None = None
    deadline = time.monotonic() + 30
    while refused is None:
        assert time.monotonic() < deadline, f"never limited after {spent} tokens"
        try:
            answer = limited.completions.create(
                model=mesh.model, prompt="tell me a story", max_tokens=16
            )
        except openai.RateLimitError as error:
            refused = error
            break
        assert answer.usage is not None
        spent += answer.usage.total_tokens
        if spent > TOKENS_PER_MINUTE:
            time.sleep(0.1)  # a heartbeat and a push away
    # The key had its budget's worth before it was refused, and not much more (what it
    # can spend within a heartbeat interval and a push).
    assert spent >= TOKENS_PER_MINUTE
    assert refused.status_code == 429
    assert int(refused.response.headers["retry-after"]) >= 1
    body = refused.response.json()
    assert "token rate limit" in body["error"]["message"]
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED"
    # Another key is not affected.
    answer = free.completions.create(model=mesh.model, prompt="tell me a story", max_tokens=4)
    assert answer.choices[0].text is not None
