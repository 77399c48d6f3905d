"""storaged against the REAL registry: both services over real gRPC sockets.

The registry (registry.core.Registry + RegistryServicer, a temp data dir, 64 KiB chunks
so every weight file spans many) imports the tiny chat model from a directory through
ImportModel; storaged (in-process, and once as a ``python -m storaged.server`` process)
fetches it with EnsureModel. ReadBlob traffic is counted by an interceptor wrapped
around the registry's own servicer, per blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
import torch
from helios.v1 import registry_pb2 as rpb
from helios.v1 import registry_pb2_grpc, storage_pb2_grpc
from helios.v1 import storage_pb2 as pb

from cli.processes import ServiceProcess
from models.tinymodel import build_tiny_model
from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.paths import PathRoots
from runtime.server import RunningServer, start_server
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.remote import RegistryClient
from storaged.servicer import StorageServicer
from storaged.tiers import Tier, TierConfig

CHUNK = 64 * 1024
MODEL = "Helios/Tiny-Chat"  # the registry canonicalises it to lower case
CANONICAL = "helios/tiny-chat"
ROOT = Path(__file__).resolve().parents[2]


class ReadBlobCounter(grpc.aio.ServerInterceptor):
    """Counts the bytes every ReadBlob response carries, per blob, as they are sent."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.calls = 0

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.endswith("/ReadBlob"):
            return handler
        inner = cast(
            Callable[
                [rpb.ReadBlobRequest, grpc.aio.ServicerContext],
                AsyncIterator[rpb.ReadBlobResponse],
            ],
            handler.unary_stream,
        )

        async def counted(
            request: rpb.ReadBlobRequest, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[rpb.ReadBlobResponse]:
            self.calls += 1
            async for response in inner(request, context):
                self.bytes[request.sha256] += len(response.data)
                yield response

        return grpc.unary_stream_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Mesh:
    registry: registry_pb2_grpc.RegistryServiceStub
    storaged: storage_pb2_grpc.StorageServiceStub
    counter: ReadBlobCounter
    registry_address: str
    cache: ModelCache


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "helios-tiny-chat")


@pytest_asyncio.fixture
async def mesh(tmp_path: Path, tiny_src: Path) -> AsyncIterator[Mesh]:
    registry = Registry.open(tmp_path / "registry", chunk_size=CHUNK)
    counter = ReadBlobCounter()
    # ImportModel reads the test's model directories only (--import-root).
    roots = PathRoots([tmp_path, tiny_src])
    servicer = RegistryServicer(registry, import_roots=roots)

    def register_registry(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return ["helios.v1.RegistryService"]

    reg_server = await start_server(
        ServerSettings(service="registry", metrics_port=-1),
        register_registry,
        interceptors=[counter],
    )
    client = RegistryClient(reg_server.address)
    cache = ModelCache(
        [
            TierConfig(Tier.RAM, tmp_path / "node" / "ram", 8 << 20),
            TierConfig(Tier.SSD, tmp_path / "node" / "ssd", 64 << 20),
        ],
        client,
        ChunkedDownloader([client], connections=4, backoff_s=0.01),
    )
    storage_servicer = StorageServicer(cache)

    def register_storaged(server: grpc.aio.Server) -> list[str]:
        storage_pb2_grpc.add_StorageServiceServicer_to_server(storage_servicer, server)
        return ["helios.v1.StorageService"]

    st_server: RunningServer = await start_server(
        ServerSettings(service="storaged", metrics_port=-1), register_storaged
    )
    reg_channel = grpc.aio.insecure_channel(reg_server.address)
    st_channel = grpc.aio.insecure_channel(st_server.address)
    try:
        yield Mesh(
            registry_pb2_grpc.RegistryServiceStub(reg_channel),
            storage_pb2_grpc.StorageServiceStub(st_channel),
            counter,
            reg_server.address,
            cache,
        )
    finally:
        await st_channel.close(None)
        await reg_channel.close(None)
        await st_server.stop(0)
        await cache.close()
        await client.close()
        await reg_server.stop(0)
        registry.close()


async def import_dir(mesh: Mesh, directory: Path) -> rpb.ModelVersion:
    responses = [
        r
        async for r in mesh.registry.ImportModel(
            rpb.ImportModelRequest(source=str(directory), model_id=MODEL)
        )
    ]
    assert responses[-1].HasField("version")
    return responses[-1].version


async def ensure(
    stub: storage_pb2_grpc.StorageServiceStub, model_id: str, version: str = ""
) -> list[pb.EnsureModelResponse]:
    return [
        m async for m in stub.EnsureModel(pb.EnsureModelRequest(model_id=model_id, version=version))
    ]


def assert_sane_progress(msgs: list[pb.EnsureModelResponse], total: int, files: int) -> None:
    assert msgs, "no progress at all"
    done = [m.bytes_done for m in msgs]
    assert done == sorted(done), f"bytes_done went backwards: {done}"
    assert all(m.bytes_total == total and m.files_total == files for m in msgs)
    assert all(0 <= m.bytes_done <= total and 0 <= m.files_done <= files for m in msgs)
    assert [m.files_done for m in msgs] == sorted(m.files_done for m in msgs)
    assert all(m.tier != pb.CACHE_TIER_UNSPECIFIED for m in msgs)
    assert all(m.bytes_per_second >= 0 for m in msgs)
    assert all(not m.local_dir for m in msgs[:-1]), "local_dir before the end"
    last = msgs[-1]
    assert last.local_dir and last.bytes_done == total and last.files_done == files


async def test_ensure_model_from_real_registry(mesh: Mesh, tiny_src: Path) -> None:
    version = await import_dir(mesh, tiny_src)
    assert version.model_id == CANONICAL
    resolved = await mesh.registry.ResolveModel(rpb.ResolveModelRequest(reference=MODEL))
    manifest = await mesh.registry.GetManifest(rpb.GetManifestRequest(version=version))
    source = tree(tiny_src)
    total = sum(len(b) for b in source.values())
    assert resolved.total_bytes == manifest.total_bytes == total
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    assert len(weights.chunk_sha256) == -(-weights.size_bytes // CHUNK) > 10

    # Cold: every byte comes from the registry, each blob read once.
    msgs = await ensure(mesh.storaged, MODEL)
    assert_sane_progress(msgs, total, len(source))
    local = Path(msgs[-1].local_dir)
    assert msgs[-1].tier == pb.CACHE_TIER_RAM
    assert tree(local) == source  # every file, byte for byte, nothing else
    assert mesh.counter.bytes == Counter({f.sha256: f.size_bytes for f in manifest.files})

    # Warm: the same version by every spelling, with zero registry bytes.
    before = (mesh.counter.total, mesh.counter.calls)
    for model_id, ref in [
        (MODEL, ""),
        (CANONICAL, "latest"),
        (f"models/{MODEL}", version.version),
        (CANONICAL, version.version[:10]),
    ]:
        again = await ensure(mesh.storaged, model_id, ref)
        assert again[-1].local_dir == str(local), (model_id, ref)
        assert again[-1].bytes_done == again[-1].bytes_total == total
    assert (mesh.counter.total, mesh.counter.calls) == before
    stats = await mesh.storaged.GetStats(pb.GetStatsRequest())
    assert stats.downloaded_bytes == total and stats.hit_rate > 0.5

    # The cache answers Stat/Pin by the names the registry accepts, aliases included.
    stat = await mesh.storaged.Stat(pb.StatRequest(model_id=MODEL, version="latest"))
    assert stat.version == version.version and stat.local_dir == str(local)
    await mesh.storaged.Pin(pb.PinRequest(model_id=MODEL))
    assert (await mesh.storaged.Stat(pb.StatRequest(model_id=CANONICAL))).pinned
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.storaged.Evict(pb.EvictRequest(model_id=CANONICAL))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The model loads from storaged's directory and decodes as it does from the source.
    src_tokens, src_logits = await asyncio.to_thread(greedy, tiny_src)
    st_tokens, st_logits = await asyncio.to_thread(greedy, local)
    assert st_tokens == src_tokens and len(st_tokens) == 8
    assert torch.equal(st_logits, src_logits)


def greedy(model_dir: Path) -> tuple[list[int], torch.Tensor]:
    """8 greedy tokens and their logits, the model loaded with zerocopy.load_pretrained."""
    from transformers import AutoTokenizer

    import zerocopy

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = zerocopy.load_pretrained(model_dir)
    mappings = cast(list[Any], model.zerocopy_mappings)
    assert all(any(m.contains(p) for m in mappings) for p in model.parameters()), (
        "a weight is not on the file mapping"
    )
    ids = tokenizer("the quick brown fox", return_tensors="pt").input_ids
    steps: list[torch.Tensor] = []
    with torch.no_grad():
        for _ in range(8):
            logits = model(ids).logits[0, -1]
            steps.append(logits)
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, -8:].tolist(), torch.stack(steps)


async def test_new_version_downloads_only_the_changed_file(
    mesh: Mesh, tiny_src: Path, tmp_path: Path
) -> None:
    v1 = await import_dir(mesh, tiny_src)
    first = await ensure(mesh.storaged, CANONICAL)
    v1_dir = Path(first[-1].local_dir)

    src2 = tmp_path / "v2"
    shutil.copytree(tiny_src, src2)
    config = json.loads((src2 / "config.json").read_text())
    config["helios_revision"] = 2
    (src2 / "config.json").write_text(json.dumps(config))
    v2 = await import_dir(mesh, src2)  # moves "latest"
    assert v2.version != v1.version

    before = Counter(mesh.counter.bytes)
    msgs = await ensure(mesh.storaged, CANONICAL, "latest")
    source = tree(src2)
    assert_sane_progress(msgs, sum(len(b) for b in source.values()), len(source))
    v2_dir = Path(msgs[-1].local_dir)
    assert v2_dir != v1_dir and v2.version in str(v2_dir)
    assert tree(v2_dir) == source and tree(v1_dir) == tree(tiny_src)
    fetched = mesh.counter.bytes - before
    assert fetched == Counter({sha(src2 / "config.json"): (src2 / "config.json").stat().st_size})
    # Shared files are one blob on disk: the two versions' weights are the same inode.
    w1, w2 = (v1_dir / "model.safetensors").stat(), (v2_dir / "model.safetensors").stat()
    assert (w1.st_ino, w1.st_dev) == (w2.st_ino, w2.st_dev)

    # The old version is still addressable by its id.
    old = await ensure(mesh.storaged, CANONICAL, v1.version)
    assert old[-1].local_dir == str(v1_dir)
    assert mesh.counter.bytes - before == fetched


async def test_registry_errors_keep_their_codes(mesh: Mesh, tiny_src: Path) -> None:
    await import_dir(mesh, tiny_src)
    cases = [
        ("org/missing", "", grpc.StatusCode.NOT_FOUND),
        (CANONICAL, "no-such-alias", grpc.StatusCode.NOT_FOUND),
        (CANONICAL, "0" * 40, grpc.StatusCode.NOT_FOUND),
        ("not a model id", "", grpc.StatusCode.INVALID_ARGUMENT),
        ("a/b/c", "", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for model_id, version, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ensure(mesh.storaged, model_id, version)
        assert err.value.code() == code, (model_id, version, err.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.storaged.Prefetch(pb.PrefetchRequest(model_id=model_id, version=version))
        assert err.value.code() == code, (model_id, version)
    assert mesh.counter.calls == 0


async def test_corrupt_registry_blob_is_data_loss_and_never_visible(
    mesh: Mesh, tiny_src: Path, tmp_path: Path
) -> None:
    await import_dir(mesh, tiny_src)
    weights = sha(tiny_src / "model.safetensors")
    stored = next(p for p in (tmp_path / "registry").rglob(weights) if p.is_file())
    with open(stored, "r+b") as f:  # noqa: ASYNC230 (test set-up, one byte)
        f.seek(3 * CHUNK + 5)
        byte = f.read(1)
        f.seek(3 * CHUNK + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ensure(mesh.storaged, CANONICAL)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
    node = tmp_path / "node"
    assert not [p for p in node.rglob(weights) if p.parent.name == "blobs"]
    assert not [p for p in node.rglob("model.safetensors")]


async def test_storaged_process_with_registry(mesh: Mesh, tiny_src: Path, tmp_path: Path) -> None:
    """``python -m storaged.server --registry ...`` as `helios up` runs it."""
    version = await import_dir(mesh, tiny_src)
    proc = ServiceProcess(
        "storaged",
        "storaged.server",
        [
            "--registry",
            mesh.registry_address,
            "--tier",
            f"ram={tmp_path / 'proc' / 'ram'}:8MiB",
            "--tier",
            f"ssd={tmp_path / 'proc' / 'ssd'}:64MiB",
            "--connections",
            "4",
        ],
        tmp_path / "proc-state",
    )
    env: dict[str, Any] = {"PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"}
    await proc.start(env=env)
    try:
        await proc.wait_ready(60)
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            msgs = await ensure(stub, MODEL, "latest")
            assert tree(Path(msgs[-1].local_dir)) == tree(tiny_src)
            assert msgs[-1].local_dir.endswith(version.version)
            total = mesh.counter.total
            assert total == sum(len(b) for b in tree(tiny_src).values())
            await ensure(stub, CANONICAL)
            assert mesh.counter.total == total
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ensure(stub, "org/missing")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert await proc.stop(10) == 0, proc.log_tail()
