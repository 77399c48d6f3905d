"""Hub imports through the real huggingface_hub client against a local Hub-API server."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from fake_hub import FakeHub, Fault
from registry_testlib import CHUNK

from registry.core import Registry
from registry.hub import HubClient
from registry.import_progress import ImportProgress
from runtime.errors import HeliosError, HubPermissionError, NotFoundError, UnavailableError

CONFIG = json.dumps({"model_type": "llama", "hidden_size": 64}).encode()


def hub_files(weights: bytes | None = None) -> dict[str, bytes]:
    return {
        "config.json": CONFIG,
        "model.safetensors": weights if weights is not None else os.urandom(6000),
        "tokenizer.json": b'{"tok": 1}',
        "pytorch_model.bin": os.urandom(2000),
        "docs/README.md": b"# tiny",
    }


def make_registry(tmp_path: Path, hub: FakeHub, token: str | None = None) -> Registry:
    return Registry.open(
        tmp_path / "data", chunk_size=CHUNK, hub=HubClient(hub.endpoint, token=token)
    )


async def pull(registry: Registry, source: str, **kwargs: object) -> list[ImportProgress]:
    return [p async for p in registry.import_source(source, **kwargs)]  # type: ignore[arg-type]


async def test_registry_hub_import_resolves_commit(tmp_path: Path, fake_hub: FakeHub) -> None:
    files = hub_files()
    commit = fake_hub.repo("Org/Tiny").commit(files)
    registry = make_registry(tmp_path, fake_hub)
    progress = await pull(registry, "hf://Org/Tiny@main", deny=["*.bin"])
    assert progress[-1].version == ("org/tiny", commit)
    manifest = await registry.manifest("org/tiny", "latest")
    assert manifest.source == f"hf://Org/Tiny@{commit}"
    assert {f.path for f in manifest.files} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "docs/README.md",
    }
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(files[entry.path]).hexdigest()
    assert await registry.config("org/tiny", commit) == CONFIG.decode()
    assert not any((tmp_path / "data" / "staging").rglob("*.safetensors"))  # staging cleaned


async def test_registry_hub_allow_patterns(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.repo("org/tiny").commit(hub_files())
    registry = make_registry(tmp_path, fake_hub)
    await pull(registry, "hf://org/tiny", allow=["*.json"], model_id="team/tiny-cfg")
    manifest = await registry.manifest("team/tiny-cfg", "")
    assert sorted(f.path for f in manifest.files) == ["config.json", "tokenizer.json"]
    assert fake_hub.downloads("model.safetensors") == 0


async def test_registry_hub_new_commit_downloads_only_changes(
    tmp_path: Path, fake_hub: FakeHub
) -> None:
    repo = fake_hub.repo("org/tiny")
    files = hub_files()
    repo.commit(files)
    registry = make_registry(tmp_path, fake_hub)
    await pull(registry, "hf://org/tiny@main")
    files["pytorch_model.bin"] = os.urandom(2000)
    second = repo.commit(files)
    progress = await pull(registry, "hf://org/tiny@main")
    assert progress[-1].version == ("org/tiny", second)
    assert fake_hub.downloads("model.safetensors") == 1  # LFS sha known: not fetched again
    assert fake_hub.downloads("pytorch_model.bin") == 2
    assert progress[-1].reused_bytes >= 6000
    assert len(registry.meta.versions("org/tiny")) == 2


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("hf://org/missing@main", NotFoundError),
        ("hf://org/tiny@no-such-branch", NotFoundError),
    ],
)
async def test_registry_hub_not_found(
    tmp_path: Path, fake_hub: FakeHub, source: str, error: type[HeliosError]
) -> None:
    fake_hub.repo("org/tiny").commit(hub_files())
    registry = make_registry(tmp_path, fake_hub)
    with pytest.raises(error):
        await pull(registry, source)
    assert registry.meta.versions() == []


async def test_registry_hub_token(tmp_path: Path, fake_hub: FakeHub) -> None:
    repo = fake_hub.repo("org/private")
    repo.token = "secret"
    repo.commit(hub_files())
    with pytest.raises(HubPermissionError):
        await pull(make_registry(tmp_path, fake_hub, token="wrong"), "hf://org/private")
    registry = make_registry(tmp_path, fake_hub, token="secret")
    progress = await pull(registry, "hf://org/private")
    assert progress[-1].version is not None


# 500/502/503/504/429 are retried by huggingface_hub with backoff (about 23 s) before they
# end the same way as 501; 501 keeps the test fast.
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=501), UnavailableError),
        (Fault(status=403), HubPermissionError),
        (Fault(truncate=True), UnavailableError),
    ],
)
async def test_registry_hub_faults_leave_nothing(
    tmp_path: Path, fake_hub: FakeHub, fault: Fault, error: type[HeliosError]
) -> None:
    fake_hub.repo("org/tiny").commit(hub_files())
    fake_hub.faults["model.safetensors"] = fault
    registry = make_registry(tmp_path, fake_hub)
    with pytest.raises(error):
        await pull(registry, "hf://org/tiny")
    assert registry.meta.versions() == []
    with pytest.raises(NotFoundError):
        await registry.resolve("org/tiny")
    # The fault clears: the import resumes and completes.
    fake_hub.faults.clear()
    progress = await pull(registry, "hf://org/tiny")
    assert progress[-1].version is not None
    assert progress[-1].reused_bytes > 0  # files stored before the fault were kept
