"""RegistryService over real gRPC (in-process server on port 0)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc
from registry_testlib import CHUNK

from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.paths import PathRoots
from runtime.server import start_server

Stub = registry_pb2_grpc.RegistryServiceStub


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Stub, Registry]]:
    registry = Registry.open(tmp_path / "data", chunk_size=CHUNK)
    # ImportModel reads directories under this test's tmp dir only (--import-root).
    servicer = RegistryServicer(registry, import_roots=PathRoots([tmp_path]))

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel), registry
    await running.stop(0)
    registry.close()


async def import_dir(stub: Stub, path: Path, model_id: str) -> list[pb.ImportModelResponse]:
    return [
        r
        async for r in stub.ImportModel(pb.ImportModelRequest(source=str(path), model_id=model_id))
    ]


async def test_registry_rpc_import_resolve_manifest_config(
    served: tuple[Stub, Registry], model_dir: Path
) -> None:
    stub, _ = served
    responses = await import_dir(stub, model_dir, "Org/Tiny")
    last = responses[-1]
    assert last.version.model_id == "org/tiny" and len(last.version.version) == 40
    assert last.files_done == last.files_total == 4
    assert all(not r.HasField("version") for r in responses[:-1])
    resolved = await stub.ResolveModel(pb.ResolveModelRequest(reference="models/ORG/tiny"))
    assert resolved.version == last.version
    manifest = await stub.GetManifest(pb.GetManifestRequest(version=last.version))
    assert manifest.total_bytes == resolved.total_bytes == last.bytes_total
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    assert (
        weights.sha256 == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    )
    assert weights.chunk_size_bytes == CHUNK and len(weights.chunk_sha256) == 5
    config = await stub.GetConfig(pb.GetConfigRequest(version=last.version))
    assert config.config_json == (model_dir / "config.json").read_text()
    by_alias = await stub.GetConfig(
        pb.GetConfigRequest(version=pb.ModelVersion(model_id="org/tiny", version="latest"))
    )
    assert by_alias.config_json == config.config_json
    listing = await stub.ListModels(pb.RegistryServiceListModelsRequest())
    assert list(listing.versions) == [last.version]
    assert list(listing.total_bytes) == [last.bytes_total]


async def test_registry_rpc_read_blob_offset_length(
    served: tuple[Stub, Registry], model_dir: Path
) -> None:
    stub, _ = served
    await import_dir(stub, model_dir, "org/tiny")
    data = (model_dir / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    pieces = [
        r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=sha, offset=1500, length=2000))
    ]
    assert b"".join(p.data for p in pieces) == data[1500:3500]
    assert pieces[0].offset == 1500 and pieces[0].size_bytes == len(data)
    whole = [r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=sha))]
    assert b"".join(p.data for p in whole) == data


async def test_registry_rpc_alias_delete_and_listing_pages(
    served: tuple[Stub, Registry], model_dir: Path
) -> None:
    stub, _ = served
    v1 = (await import_dir(stub, model_dir, "org/tiny"))[-1].version
    (model_dir / "tokenizer.json").write_bytes(b"{}")
    v2 = (await import_dir(stub, model_dir, "org/tiny"))[-1].version
    await import_dir(stub, model_dir, "org/other")
    reply = await stub.SetAlias(pb.SetAliasRequest(alias="prod", version=v1))
    assert not reply.HasField("previous")
    resolved = await stub.ResolveModel(pb.ResolveModelRequest(reference="org/tiny@prod"))
    assert resolved.version == v1
    moved = await stub.SetAlias(pb.SetAliasRequest(alias="prod", version=v2))
    assert moved.previous == v1
    freed = await stub.DeleteVersion(pb.DeleteVersionRequest(version=v1))
    assert freed.freed_bytes == len(b'{"version": "1.0"}x')
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveModel(pb.ResolveModelRequest(reference=f"org/tiny@{v1.version}"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    page = await stub.ListModels(pb.RegistryServiceListModelsRequest(page_size=1))
    assert [v.model_id for v in page.versions] == ["org/other"] and page.next_page_token
    rest = await stub.ListModels(
        pb.RegistryServiceListModelsRequest(page_size=1, page_token=page.next_page_token)
    )
    assert list(rest.versions) == [v2] and not rest.next_page_token


async def test_registry_rpc_usage_hints_eviction(
    served: tuple[Stub, Registry], model_dir: Path
) -> None:
    stub, _ = served
    await import_dir(stub, model_dir, "org/a")
    await import_dir(stub, model_dir, "org/b")
    await import_dir(stub, model_dir, "org/c")
    await stub.RecordUsage(pb.RecordUsageRequest(model_id="org/a", requests=50, tokens=900))
    await stub.RecordUsage(pb.RecordUsageRequest(model_id="org/b", requests=5, tokens=10))
    hints = await stub.GetPrefetchHints(pb.GetPrefetchHintsRequest(limit=5))
    assert [h.model_id for h in hints.hints] == ["org/a", "org/b"]
    assert hints.hints[0].size_bytes > 0 and hints.hints[0].version.version
    await stub.SetModelPolicy(pb.SetModelPolicyRequest(model_id="org/c", pinned=True, priority=1))
    evict = await stub.GetEvictionCandidates(pb.GetEvictionCandidatesRequest(bytes_needed=0))
    assert list(evict.model_ids) == ["org/b", "org/a"]  # c pinned, b used less
    one = await stub.GetEvictionCandidates(
        pb.GetEvictionCandidatesRequest(bytes_needed=1, loaded_model_ids=["org/a"])
    )
    assert list(one.model_ids) == ["org/a"] and one.bytes_freed == one.candidates[0].size_bytes


@pytest.mark.parametrize(
    ("call", "request_", "code"),
    [
        ("ResolveModel", pb.ResolveModelRequest(reference="../etc/passwd"), "INVALID_ARGUMENT"),
        ("ResolveModel", pb.ResolveModelRequest(reference="org/none"), "NOT_FOUND"),
        ("ResolveModel", pb.ResolveModelRequest(reference="org/x\0"), "INVALID_ARGUMENT"),
        ("GetManifest", pb.GetManifestRequest(), "INVALID_ARGUMENT"),
        (
            "GetConfig",
            pb.GetConfigRequest(version=pb.ModelVersion(model_id="org/none", version="a" * 40)),
            "NOT_FOUND",
        ),
        (
            "ImportModel",
            pb.ImportModelRequest(source="/no/such/dir", model_id="a/b"),
            "PERMISSION_DENIED",  # outside the import roots (tests/registry/..._import_roots.py)
        ),
        ("ImportModel", pb.ImportModelRequest(source="/tmp", model_id="/abs"), "PERMISSION_DENIED"),
        ("ImportModel", pb.ImportModelRequest(source="rel", model_id="a/b"), "INVALID_ARGUMENT"),
        ("ImportModel", pb.ImportModelRequest(source="hf://org/x"), "FAILED_PRECONDITION"),
        ("ReadBlob", pb.ReadBlobRequest(sha256="../../x"), "INVALID_ARGUMENT"),
        ("ReadBlob", pb.ReadBlobRequest(sha256="0" * 64), "NOT_FOUND"),
        ("ReadBlob", pb.ReadBlobRequest(sha256="0" * 64, offset=-1), "INVALID_ARGUMENT"),
        (
            "SetAlias",
            pb.SetAliasRequest(
                alias="../x", version=pb.ModelVersion(model_id="a/b", version="a" * 40)
            ),
            "INVALID_ARGUMENT",
        ),
        (
            "DeleteVersion",
            pb.DeleteVersionRequest(version=pb.ModelVersion(model_id="a/b", version="a" * 40)),
            "NOT_FOUND",
        ),
        ("RecordUsage", pb.RecordUsageRequest(model_id="a/b", requests=-1), "INVALID_ARGUMENT"),
        (
            "SetModelPolicy",
            pb.SetModelPolicyRequest(model_id="a/b", priority=9),
            "INVALID_ARGUMENT",
        ),
        ("ListModels", pb.RegistryServiceListModelsRequest(page_size=-1), "INVALID_ARGUMENT"),
    ],
)
async def test_registry_rpc_bad_input_statuses(
    served: tuple[Stub, Registry], call: str, request_: object, code: str
) -> None:
    stub, _ = served
    method = getattr(stub, call)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if call in ("ImportModel", "ReadBlob"):
            _ = [r async for r in method(request_)]
        else:
            await method(request_)
    assert err.value.code().name == code, err.value.details()
