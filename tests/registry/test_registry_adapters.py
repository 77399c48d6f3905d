"""LoRA adapters in the registry: an import with a peft adapter_config.json is an adapter
of a base model (named by the import, or found from base_model_name_or_path), which
ListModels and ResolveModel report; the schema migrates existing registries."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc
from registry_testlib import CHUNK, write_model

from registry.adapters import adapter_base
from registry.core import Registry
from registry.metadata import MIGRATIONS, MetadataStore
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.errors import FailedPreconditionError, InvalidArgumentError
from runtime.server import start_server


def lora_config(base: str, peft_type: str = "LORA") -> str:
    return json.dumps({"peft_type": peft_type, "r": 4, "base_model_name_or_path": base})


def write_adapter(directory: Path, base: str, peft_type: str = "LORA") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(lora_config(base, peft_type))
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(3000))
    return directory


def test_the_base_is_named_or_found_from_the_adapter_config() -> None:
    models = {"helios/tiny": "", "hf/smollm2-135m": "", "org/lora": "helios/tiny"}
    assert adapter_base(None, "", models) == ""  # a model
    assert adapter_base(lora_config("/any/where"), "Helios/Tiny", models) == "helios/tiny"
    assert adapter_base(lora_config("HF/SmolLM2-135M"), "", models) == "hf/smollm2-135m"
    # Not a registry id: the one model whose name is the path's last segment.
    assert adapter_base(lora_config("/tmp/x/tiny/"), "", models) == "helios/tiny"
    assert adapter_base(lora_config("HuggingFaceTB/SmolLM2-135M"), "", models) == (
        "hf/smollm2-135m"
    )
    with pytest.raises(FailedPreconditionError, match="--base"):
        adapter_base(lora_config("somewhere/else"), "", models)
    with pytest.raises(FailedPreconditionError, match="not in the registry"):
        adapter_base(lora_config("x"), "org/missing", models)
    with pytest.raises(InvalidArgumentError, match="itself a LoRA adapter"):
        adapter_base(lora_config("x"), "org/lora", models)
    with pytest.raises(InvalidArgumentError, match="only a LoRA adapter has a base"):
        adapter_base(None, "helios/tiny", models)
    with pytest.raises(InvalidArgumentError, match="PREFIX_TUNING"):
        adapter_base(lora_config("helios/tiny", "PREFIX_TUNING"), "", models)


async def collect(registry: Registry, source: Path, model_id: str, base: str = "") -> str:
    version = ""
    async for progress in registry.import_source(str(source), model_id, base=base):
        if progress.version is not None:
            version = progress.version[1]
    return version


async def test_an_imported_adapter_keeps_its_base(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "data", chunk_size=CHUNK)
    try:
        await collect(registry, write_model(tmp_path / "tiny"), "helios/tiny")
        await collect(registry, write_adapter(tmp_path / "a", "/somewhere/tiny"), "org/lora-a")
        await collect(registry, write_adapter(tmp_path / "b", "x/y"), "org/lora-b", "helios/tiny")
        with pytest.raises(FailedPreconditionError, match="--base"):
            await collect(registry, write_adapter(tmp_path / "c", "x/y"), "org/lora-c")
        rows, _ = registry.list_models(10, "")
        assert {r.model_id: r.base for r in rows} == {
            "helios/tiny": "",
            "org/lora-a": "helios/tiny",
            "org/lora-b": "helios/tiny",
        }
        assert (await registry.resolve("org/lora-a")).base == "helios/tiny"
    finally:
        registry.close()
    # A restart reads the bases back.
    reopened = Registry.open(tmp_path / "data", chunk_size=CHUNK)
    try:
        assert (await reopened.resolve("org/lora-b")).base == "helios/tiny"
    finally:
        reopened.close()


def test_an_existing_registry_migrates_its_versions_to_models(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(script)
        db.execute("INSERT INTO schema_version VALUES (?)", (number,))
    db.execute("INSERT INTO models VALUES ('org/old', 0)")
    db.execute("INSERT INTO versions VALUES ('org/old', 'v', 'src', 10, NULL, 0)")
    db.close()
    store = MetadataStore(path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        (row,) = store.versions()
        assert (row.model_id, row.base) == ("org/old", "")
    finally:
        store.close()


@pytest_asyncio.fixture
async def stub(tmp_path: Path) -> AsyncIterator[registry_pb2_grpc.RegistryServiceStub]:
    registry = Registry.open(tmp_path / "data", chunk_size=CHUNK)

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)
    await running.stop(0)
    registry.close()


def upload_messages(
    directory: Path, model_id: str, base: str
) -> tuple[pb.UploadModelHeader, list[pb.UploadModelRequest]]:
    """UploadModel's header and chunks for the files of ``directory``."""
    header = pb.UploadModelHeader(model_id=model_id, base=base)
    messages = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        rel = path.relative_to(directory).as_posix()
        header.files.add(path=rel, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        if data:
            messages.append(pb.UploadModelRequest(chunk=pb.UploadModelChunk(path=rel, data=data)))
    return header, messages


async def upload(
    stub: registry_pb2_grpc.RegistryServiceStub, directory: Path, model_id: str, base: str = ""
) -> pb.UploadModelResponse:
    header, messages = upload_messages(directory, model_id, base)

    async def requests() -> AsyncIterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=header)
        for message in messages:
            yield message

    return await stub.UploadModel(requests())


async def test_uploads_name_the_base_and_the_listing_reports_it(
    stub: registry_pb2_grpc.RegistryServiceStub, tmp_path: Path
) -> None:
    model = await upload(stub, write_model(tmp_path / "tiny"), "helios/tiny")
    assert model.base == ""
    adapter = await upload(stub, write_adapter(tmp_path / "a", "x/y"), "org/lora", "helios/tiny")
    assert adapter.base == "helios/tiny"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upload(stub, write_adapter(tmp_path / "b", "x/y"), "org/lora-b")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--base" in (refused.value.details() or "")
    listing = await stub.ListModels(pb.RegistryServiceListModelsRequest())
    assert dict(zip([v.model_id for v in listing.versions], listing.bases, strict=True)) == {
        "helios/tiny": "",
        "org/lora": "helios/tiny",
    }
    resolved = await stub.ResolveModel(pb.ResolveModelRequest(reference="org/lora"))
    assert resolved.base == "helios/tiny"
