"""Blob-store backends (local, S3, Azure) against real protocol servers: ``moto_server``
for S3 and Azurite for Azure Blob, each started once per session on 127.0.0.1 with a
free port. Shared behaviour is parametrized over all three backends."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc
from registry_testlib import CHUNK, write_model

from registry.azure_store import AzureBlobStore
from registry.blobs import BlobStore, LocalBlobStore
from registry.cloud import S3_MIN_PART_SIZE, blob_key
from registry.core import Registry
from registry.s3_store import S3BlobStore
from registry.server import build_parser, make_blob_store
from registry.servicer import RegistryServicer
from registry.settings import RegistrySettings
from runtime.config import ConfigError, ServerSettings
from runtime.errors import BlobStoreError, DataLossError, ErrorCode, NotFoundError
from runtime.paths import PathRoots
from runtime.server import start_server
from runtime.settings import from_namespace

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented, emulator only).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURE_BLOCK = 256 * 1024  # small blocks so that modest blobs span several
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# emulators -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    endpoint: str
    process: subprocess.Popen[bytes]


def start_emulator(
    name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Emulator:
    """Start ``argv``, wait until it answers HTTP on ``port``; skip if it cannot start."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            return Emulator(endpoint, process)
        except urllib.error.HTTPError:
            return Emulator(endpoint, process)  # it answered (4xx is fine)
        except OSError:
            time.sleep(0.1)
    stop_emulator(process)
    tail = log.read_text(errors="replace")[-1500:]
    pytest.skip(f"{name} could not start on 127.0.0.1:{port}: {tail}")


def stop_emulator(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    emulator = start_emulator("moto_server", [exe, "-H", "127.0.0.1", "-p", str(port)], port, log)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in S3_ENV.items():
            mp.setenv(key, value)
        yield emulator.endpoint
    stop_emulator(emulator.process)


@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not AZURITE.exists() or shutil.which("node") is None:
        pytest.skip("Azurite is not installed (run `npm ci` in the repository root)")
    port = free_port()
    location = tmp_path_factory.mktemp("azurite")
    argv = [
        str(AZURITE),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",  # else it phones home, and on SIGTERM waits ~15 s to flush
    ]
    emulator = start_emulator("azurite-blob", argv, port, location / "azurite.log")
    yield (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={emulator.endpoint}/{AZURITE_ACCOUNT};"
    )
    stop_emulator(emulator.process)


# one harness per backend ---------------------------------------------------------------


@dataclass
class Harness:
    """A fresh, empty store plus raw access to what its storage holds."""

    store: BlobStore
    listing: Callable[[], list[str]]  # every object/file the storage holds
    tamper: Callable[[str, bytes], None]  # overwrite blob ``sha`` behind the store's back
    large: int  # a size that takes several parts/blocks
    fail_at: int  # a source that fails after this many bytes has parts/blocks sent already


def local_harness(root: Path) -> Harness:
    store = LocalBlobStore(root)

    def listing() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def tamper(sha256: str, data: bytes) -> None:
        store.path(sha256).write_bytes(data)

    return Harness(store, listing, tamper, large=3 * 1024 * 1024 + 7, fail_at=1024 * 1024)


def s3_harness(endpoint: str) -> Harness:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = S3BlobStore.connect(
        bucket, "helios/reg", endpoint_url=endpoint, addressing_style="path", max_attempts=2
    )
    store.part_size = S3_MIN_PART_SIZE
    store.check(create=True)
    client = store.client

    def listing() -> list[str]:
        objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted([o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads])

    def tamper(sha256: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=store.key(sha256), Body=data)

    # parts 1 and 2 must be full before the multipart upload starts (one part: one PUT)
    large = 3 * S3_MIN_PART_SIZE + 1000
    return Harness(store, listing, tamper, large=large, fail_at=2 * S3_MIN_PART_SIZE + 500)


def azure_harness(connection_string: str) -> Harness:
    container = f"c-{uuid.uuid4().hex[:12]}"
    store = AzureBlobStore.connect(
        connection_string, container, "helios/reg", block_size=AZURE_BLOCK, retry_total=1
    )
    store.check(create=True)
    client = store.container

    def listing() -> list[str]:
        return sorted(b.name for b in client.list_blobs())

    def tamper(sha256: str, data: bytes) -> None:
        client.get_blob_client(store.key(sha256)).upload_blob(data, overwrite=True)

    return Harness(store, listing, tamper, large=4 * AZURE_BLOCK + 1000, fail_at=3 * AZURE_BLOCK)


@pytest.fixture(params=["local", "s3", "azure"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        return local_harness(tmp_path / "blobs")
    if request.param == "s3":
        return s3_harness(request.getfixturevalue("s3_endpoint"))
    return azure_harness(request.getfixturevalue("azurite_connection_string"))


def read_all(store: BlobStore, sha256: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join(store.read(sha256, offset, length))


def stored(h: Harness) -> list[str]:
    """The blob files/objects (the local store's empty tmp/ dir is not a blob)."""
    return [name for name in h.listing() if not name.startswith("tmp/")]


# shared behaviour ----------------------------------------------------------------------


def test_remote_blobs_put_get_has_delete(harness: Harness, tmp_path: Path) -> None:
    store = harness.store
    data = os.urandom(300_000)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    name = sha(data)
    assert not store.exists(name)
    assert store.put_file(name, source) is True
    assert store.exists(name)
    assert read_all(store, name) == data
    assert read_all(store, name, 1000, 5000) == data[1000:6000]
    assert read_all(store, name, 299_000) == data[299_000:]
    assert read_all(store, name, len(data)) == b""
    if store.name != "local":
        assert stored(harness) == [blob_key("helios/reg/", name)]
    store.delete(name)
    assert not store.exists(name)
    with pytest.raises(NotFoundError):
        store.read(name)
    store.delete(name)  # deleting a missing blob is not an error
    assert stored(harness) == []


def test_remote_blobs_multipart_round_trip_and_ranges(harness: Harness, tmp_path: Path) -> None:
    data = os.urandom(harness.large)
    source = tmp_path / "large.bin"
    source.write_bytes(data)
    name = sha(data)
    assert harness.store.put_file(name, source)
    assert read_all(harness.store, name) == data
    middle = harness.large // 2
    assert read_all(harness.store, name, middle - 10, 20_000) == data[middle - 10 : middle + 19_990]
    assert read_all(harness.store, name, 5) == data[5:]
    assert len(stored(harness)) == 1


def test_remote_blobs_dedup_same_bytes_stored_once(harness: Harness, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data)
    name = sha(data)
    assert harness.store.put_file(name, tmp_path / "a") is True
    assert harness.store.put_file(name, tmp_path / "b") is False
    assert len(stored(harness)) == 1


def test_remote_blobs_concurrent_writers_of_one_blob(harness: Harness, tmp_path: Path) -> None:
    data = os.urandom(harness.large)
    source = tmp_path / "same.bin"
    source.write_bytes(data)
    name = sha(data)
    results: list[bool] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(harness.store.put_file(name, source))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and True in results
    assert read_all(harness.store, name) == data
    assert len(stored(harness)) == 1


@pytest.mark.parametrize("size", ["small", "large"])
def test_remote_blobs_wrong_hash_is_rejected_and_nothing_visible(
    harness: Harness, tmp_path: Path, size: str
) -> None:
    data = os.urandom(1000 if size == "small" else harness.large)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    wrong = sha(data + b"!")
    with pytest.raises(DataLossError) as err:
        harness.store.put_file(wrong, source)
    assert err.value.code is ErrorCode.DATA_LOSS
    assert wrong in str(err.value)
    assert not harness.store.exists(wrong) and not harness.store.exists(sha(data))
    assert stored(harness) == []


def test_remote_blobs_failure_mid_upload_leaves_nothing(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(harness.large)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    name = sha(data)
    sent: list[int] = []

    def failing(path: Path, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        for at in range(0, harness.fail_at, 64 * 1024):
            piece = data[at : min(at + 64 * 1024, harness.fail_at)]
            sent.append(len(piece))
            yield piece
        raise OSError("the source disk went away")

    monkeypatch.setattr(sys.modules[type(harness.store).__module__], "iter_file", failing)
    with pytest.raises(BlobStoreError) as err:
        harness.store.put_file(name, source)
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert "went away" in str(err.value)
    assert sum(sent) == harness.fail_at < len(data)  # it failed halfway, not before starting
    assert not harness.store.exists(name)
    with pytest.raises(NotFoundError):
        harness.store.read(name)
    assert stored(harness) == []  # S3: no multipart upload left either
    monkeypatch.undo()
    assert harness.store.put_file(name, source) is True  # a retry starts clean
    assert read_all(harness.store, name) == data


async def test_remote_blobs_corruption_detected_on_read(harness: Harness, tmp_path: Path) -> None:
    model = write_model(tmp_path / "src", weights=os.urandom(5000))
    registry = Registry.open(tmp_path / "data", harness.store, chunk_size=CHUNK)
    try:
        _ = [progress async for progress in registry.import_directory(model, "org/tiny")]
        weights = (model / "model.safetensors").read_bytes()
        name = sha(weights)
        corrupt = bytearray(weights)
        corrupt[3000] ^= 0xFF
        harness.tamper(name, bytes(corrupt))
        with pytest.raises(DataLossError):
            _ = [p async for p in registry.read_blob(name)]
        with pytest.raises(DataLossError, match="chunk 2"):  # a range: per-chunk hashes
            _ = [p async for p in registry.read_blob(name, 2000, 1500)]
        # chunks before the damage still verify and are served
        head = b"".join([p async for _, _, p in registry.read_blob(name, 0, 2048)])
        assert head == weights[:2048]
        if harness.store.name != "local":  # remote stores also check whole-blob reads
            with pytest.raises(DataLossError):
                read_all(harness.store, name)
    finally:
        registry.close()


# the registry service over each backend ------------------------------------------------

Stub = registry_pb2_grpc.RegistryServiceStub


@pytest_asyncio.fixture
async def served(harness: Harness, tmp_path: Path) -> AsyncIterator[tuple[Stub, Harness]]:
    registry = Registry.open(tmp_path / "data", harness.store, chunk_size=CHUNK)
    servicer = RegistryServicer(registry, import_roots=PathRoots([tmp_path]))

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel), harness
    await running.stop(0)
    registry.close()


async def import_dir(stub: Stub, path: Path, model_id: str) -> pb.ImportModelResponse:
    responses = [
        r
        async for r in stub.ImportModel(pb.ImportModelRequest(source=str(path), model_id=model_id))
    ]
    return responses[-1]


async def test_remote_blobs_import_model_and_read_blob_over_grpc(
    served: tuple[Stub, Harness], tmp_path: Path
) -> None:
    stub, h = served
    model = write_model(tmp_path / "src", weights=os.urandom(20_000))
    first = await import_dir(stub, model, "org/tiny")
    assert first.files_done == first.files_total == 4
    assert len(stored(h)) == 4
    weights = (model / "model.safetensors").read_bytes()
    name = sha(weights)
    assert h.store.exists(name)
    whole = [r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=name))]
    assert b"".join(r.data for r in whole) == weights
    part = [
        r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=name, offset=4100, length=9000))
    ]
    assert b"".join(r.data for r in part) == weights[4100:13100]
    config = await stub.GetConfig(pb.GetConfigRequest(version=first.version))
    assert config.config_json == (model / "config.json").read_text()
    # a second model sharing every file but one: only the changed file is stored
    (model / "tokenizer.json").write_bytes(b'{"version": "2.0"}')
    await import_dir(stub, model, "org/other")
    assert len(stored(h)) == 5
    # damage in the store surfaces as DATA_LOSS, never as bad bytes
    h.tamper(name, weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=name))]
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


# server flags and backend-specific behaviour ------------------------------------------


def registry_settings(parser: argparse.ArgumentParser, argv: list[str]) -> RegistrySettings:
    return from_namespace(RegistrySettings, parser.parse_args(argv))


async def test_remote_blobs_server_flags_build_working_stores(
    s3_endpoint: str,
    azurite_connection_string: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HELIOS_REGISTRY_AZURE_CONTAINER", f"flags-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MY_AZURE_CS", azurite_connection_string)
    parser = build_parser()  # env defaults are read when the parser is built
    s3_args = registry_settings(
        parser,
        [
            "--data-dir",
            str(tmp_path),
            "--blob-backend",
            "s3",
            "--s3-endpoint-url",
            s3_endpoint,
            "--s3-bucket",
            f"flags-{uuid.uuid4().hex[:8]}",
            "--s3-prefix",
            "/team//models/",
            "--s3-addressing-style",
            "path",
            "--s3-part-size",
            "5MiB",
            "--s3-create-bucket",
        ],
    )
    azure_args = registry_settings(
        parser,
        [
            "--blob-backend",
            "azure",
            "--azure-connection-string-env",
            "MY_AZURE_CS",
            "--azure-create-container",
            "--azure-block-size",
            "64KiB",
        ],
    )
    source = tmp_path / "x.bin"
    source.write_bytes(os.urandom(200_000))
    name = sha(source.read_bytes())
    for args in (s3_args, azure_args):
        store: Any = make_blob_store(args)
        assert store.name == args.blob_backend
        assert store.put_file(name, source) and read_all(store, name) == source.read_bytes()
    assert s3_args.s3_part_size == 5 * 1024 * 1024 and azure_args.azure_block_size == 65536
    s3_store: Any = make_blob_store(s3_args)
    assert s3_store.key(name) == f"team/models/blobs/sha256/{name[:2]}/{name}"


def test_remote_blobs_missing_bucket_container_or_settings_fail_clearly(
    s3_endpoint: str,
    azurite_connection_string: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    args = registry_settings(
        parser,
        ["--blob-backend", "s3", "--s3-endpoint-url", s3_endpoint, "--s3-bucket", "nope-404"],
    )
    with pytest.raises(BlobStoreError, match="nope-404"):
        make_blob_store(args)
    with pytest.raises(ConfigError, match="s3_bucket"):
        make_blob_store(registry_settings(parser, ["--blob-backend", "s3"]))
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
        make_blob_store(
            registry_settings(parser, ["--blob-backend", "azure", "--azure-container", "c"])
        )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string)
    with pytest.raises(BlobStoreError, match="does not exist"):
        make_blob_store(
            registry_settings(parser, ["--blob-backend", "azure", "--azure-container", "gone"])
        )
    with pytest.raises(ConfigError, match="prefix"):
        S3BlobStore.connect("b", "a/../b", endpoint_url=s3_endpoint)


def test_remote_blobs_s3_stale_multipart_uploads_are_aborted(s3_endpoint: str) -> None:
    h = s3_harness(s3_endpoint)
    store = h.store
    assert isinstance(store, S3BlobStore)
    key = store.key("ab" * 32)  # as a crashed writer would leave it
    store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
    store.client.create_multipart_upload(Bucket=store.bucket, Key="other/not-ours")
    # (moto reports every upload as initiated in 2010, so any age threshold matches)
    assert store.abort_stale_uploads(timedelta(hours=1)) == 1  # only under the store's prefix
    assert h.listing() == ["upload:other/not-ours"]


@pytest.mark.parametrize("backend", ["s3", "azure"])
async def test_remote_blobs_registry_process_imports_into_remote_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``python -m registry.server --blob-backend s3|azure``: a real process, real flags."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "gen")])}
    if backend == "s3":
        flags = [
            "--s3-endpoint-url",
            request.getfixturevalue("s3_endpoint"),
            "--s3-bucket",
            f"proc-{uuid.uuid4().hex[:8]}",
            "--s3-addressing-style",
            "path",
            "--s3-create-bucket",
        ]
        env.update(S3_ENV)
    else:
        env["AZURE_STORAGE_CONNECTION_STRING"] = request.getfixturevalue(
            "azurite_connection_string"
        )
        flags = ["--azure-container", f"proc-{uuid.uuid4().hex[:8]}", "--azure-create-container"]
    ready = tmp_path / "ready.json"
    argv = [sys.executable, "-m", "registry.server", "--port", "0", "--metrics-port", "-1"]
    argv += ["--ready-file", str(ready), "--data-dir", str(tmp_path / "data")]
    argv += ["--blob-backend", backend, "--chunk-size", str(CHUNK), *flags]
    argv += ["--import-root", str(tmp_path)]
    log = tmp_path / "registry.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.returncode is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        info = json.loads(ready.read_text())
        model = write_model(tmp_path / "src", weights=os.urandom(9000))
        weights = (model / "model.safetensors").read_bytes()
        async with grpc.aio.insecure_channel(f"{info['host']}:{info['grpc_port']}") as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            done = await import_dir(stub, model, "org/remote")
            assert done.files_done == 4 and done.version.model_id == "org/remote"
            pieces = [r async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=sha(weights)))]
            assert b"".join(r.data for r in pieces) == weights
        # the bytes went to the remote store, none to a local blob directory
        assert not (tmp_path / "data" / "blobs").exists()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
