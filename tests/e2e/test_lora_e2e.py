"""LoRA adapters through the real mesh (`helios up`, Envoy, the tiny model), with the
official openai SDK: adapters made here with peft are pulled while the mesh runs
(`helios pull ./adapter --as org/name`, the base from adapter_config.json or --base),
and the same greedy prompt answers differently from the base and from each adapter,
by the adapter's id and as <base>:<adapter>, cold (the proxy relays it) and warm (Envoy
routes it to the worker holding the base)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
from support.lora_adapters import make_lora_adapter
from support.mesh_harness import Mesh

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Once upon a time"


def helios(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    """A `helios` command on the mesh's machine (its HELIOS_HOME finds the mesh)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HELIOS_ADDRESS", "HELIOS_PORT")}
    env["HELIOS_HOME"] = str(Path(mesh.info["admin_key_file"]).parent)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def proxy_served(mesh: Mesh, model: str) -> float:
    """The requests for ``model`` the proxy served itself (its cold path)."""
    request = urllib.request.Request(f"{mesh.rest_url}/metrics", headers=mesh.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^helios_proxy_requests_total{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def complete(api: openai.OpenAI, model: str) -> str:
    answer = api.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return answer.choices[0].text


def test_an_adapter_pulled_while_the_mesh_runs_changes_the_answer(
    mesh: Mesh, tmp_path: Path
) -> None:
    one = make_lora_adapter(mesh.model_dir, tmp_path / "one", seed=1, base_name=mesh.model)
    # The second names a base the registry does not know: --base says which it is.
    two = make_lora_adapter(mesh.model_dir, tmp_path / "two", seed=2, base_name="somewhere/else")
    pulled = helios(mesh, "pull", str(one), "--as", "test/lora-one", "--no-progress")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith("test/lora-one@")
    refused = helios(mesh, "pull", str(two), "--as", "test/lora-two", "--no-progress")
    assert refused.returncode == 1 and "--base" in refused.stderr
    pulled = helios(
        mesh, "pull", str(two), "--as", "test/lora-two", "--base", mesh.model, "--no-progress"
    )
    assert pulled.returncode == 0, pulled.stderr

    api = openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)
    base = complete(api, mesh.model)
    first = complete(api, "test/lora-one")  # cold: no route yet, the proxy relays it
    assert first and first != base
    assert complete(api, f"{mesh.model}:test/lora-one") == first
    second = complete(api, f"{mesh.model}:test/lora-two")
    assert second not in (base, first)
    assert proxy_served(mesh, "test/lora-one") >= 1
    # Warm: within a few heartbeats Envoy routes the adapter to the worker itself (the
    # proxy serves no more of its requests), and the answer stays the same.
    deadline = time.monotonic() + 15
    while True:
        before = proxy_served(mesh, "test/lora-one")
        assert complete(api, "test/lora-one") == first
        if proxy_served(mesh, "test/lora-one") == before:
            break
        assert time.monotonic() < deadline, "Envoy never routed the adapter to its worker"
        time.sleep(0.2)
    assert complete(api, "test/lora-two") == second
    # /v1/models lists adapters as vLLM does: with their parent, warm where it is.
    listed = {m.id: m.to_dict() for m in api.models.list()}
    assert listed["test/lora-one"]["parent"] == mesh.model
    assert listed["test/lora-one"]["warm_status"] == "warm"
    assert not listed[mesh.model].get("parent")
    assert complete(api, mesh.model) == base

    chat = api.chat.completions.create(
        model="test/lora-one",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=8,
        temperature=0,
    )
    plain = api.chat.completions.create(
        model=mesh.model,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.content != plain.choices[0].message.content
    assert chat.model == "test/lora-one"

    try:
        api.completions.create(model="org/other:test/lora-one", prompt=PROMPT, max_tokens=2)
        raise AssertionError("an adapter on another base must be refused")
    except openai.BadRequestError as error:
        assert "adapter of" in str(error)
