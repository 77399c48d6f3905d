"""Security: the registry reads server directories only under its import roots, and takes
client files through UploadModel (issue 16, item 1).

The reported hole: ImportModel accepted any server directory as ``source`` (/etc/ssh, the
user's home, the state dir), and GetManifest + ReadBlob then returned the files' bytes.
Now a directory outside the roots (``--import-root``; none by default) is
PERMISSION_DENIED before anything is opened, with the same answer whether it exists or not,
and nothing is recorded. ``helios pull ./dir --registry`` uploads the files instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc
from registry_testlib import CHUNK, write_model
from support.fakes import serve

from cli.processes import ServiceProcess
from registry.core import Registry
from registry.servicer import RegistryServicer
from registry.upload import MAX_UPLOAD_CHUNK
from runtime.paths import PathRoots

Stub = registry_pb2_grpc.RegistryServiceStub
LIMIT = 100_000  # this registry's --max-upload-bytes


@dataclass
class Served:
    stub: Stub
    registry: Registry
    data: Path
    root: Path  # the one import root
    outside: Path  # a model directory outside it


async def _serve(
    tmp_path: Path, roots: Iterable[Path] | None
) -> tuple[grpc.aio.Channel, Registry, object]:
    registry = Registry.open(tmp_path / "data", chunk_size=CHUNK, max_upload_bytes=LIMIT)
    servicer = RegistryServicer(registry, import_roots=None if roots is None else PathRoots(roots))
    running = await serve(
        "RegistryService", registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer
    )
    return grpc.aio.insecure_channel(running.address), registry, running


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    root = tmp_path / "root"
    write_model(root / "tiny")
    outside = write_model(tmp_path / "outside")
    channel, registry, running = await _serve(tmp_path, [root])
    async with channel:
        yield Served(Stub(channel), registry, tmp_path / "data", root, outside)
    await running.stop(0)  # type: ignore[attr-defined]
    registry.close()


async def import_dir(stub: Stub, source: str, model_id: str = "org/x") -> pb.ModelVersion:
    last = None
    async for step in stub.ImportModel(
        pb.ImportModelRequest(source=source, model_id=model_id), timeout=30
    ):
        last = step
    assert last is not None and last.HasField("version")
    return last.version


async def refused(stub: Stub, source: str, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await import_dir(stub, source)
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


def blob_files(data: Path) -> list[Path]:
    return [p for p in (data / "blobs" / "sha256").rglob("*") if p.is_file()]


def staged_files(data: Path) -> list[Path]:
    return [p for p in (data / "staging").rglob("*") if p.is_file()]


async def assert_nothing_recorded(s: Served) -> None:
    listing = await s.stub.ListModels(pb.RegistryServiceListModelsRequest())
    assert not listing.versions
    assert blob_files(s.data) == []
    assert staged_files(s.data) == []
    assert s.registry.meta.versions() == []


async def read_all(stub: Stub, sha256: str) -> bytes:
    return b"".join([r.data async for r in stub.ReadBlob(pb.ReadBlobRequest(sha256=sha256))])


# --- ImportModel: server directories only under the roots ----------------------------


async def test_the_reported_hole_is_closed(served: Served) -> None:
    """ImportModel of /etc/ssh (or /etc, the home directory) is refused; nothing stored."""
    for source in ["/etc/ssh", "/etc", str(Path.home()), "/"]:
        await refused(served.stub, source, grpc.StatusCode.PERMISSION_DENIED)
    await assert_nothing_recorded(served)


async def test_escapes_from_the_root_are_denied(served: Served, tmp_path: Path) -> None:
    link = served.root / "link"
    link.symlink_to(served.outside, target_is_directory=True)
    for source in [
        str(served.outside),  # a model directory, not under the root
        f"{served.root}/../outside",  # ".." out of the root
        f"{served.root}/tiny/../../outside",
        str(link),  # a symlink in the root pointing out of it
        str(link / "sub"),
        str(tmp_path),  # the root's parent
    ]:
        await refused(served.stub, source, grpc.StatusCode.PERMISSION_DENIED)
    await assert_nothing_recorded(served)


async def test_a_file_linking_out_of_the_root_is_refused(served: Served) -> None:
    model = served.root / "tiny"
    (model / "stolen.txt").symlink_to(served.outside / "tokenizer.json")
    details = await refused(served.stub, str(model), grpc.StatusCode.INVALID_ARGUMENT)
    assert "stolen.txt" in details and "outside" in details
    await assert_nothing_recorded(served)


async def test_no_existence_oracle(served: Served, tmp_path: Path) -> None:
    """An outside path that exists and one that does not get the same answer."""
    exists, missing = str(served.outside), str(tmp_path / "no-such-dir")
    one = await refused(served.stub, exists, grpc.StatusCode.PERMISSION_DENIED)
    other = await refused(served.stub, missing, grpc.StatusCode.PERMISSION_DENIED)
    assert one.replace(exists, "P") == other.replace(missing, "P")
    for word in ("exist", "not a directory", "no such", "not found"):
        assert word not in one.replace(exists, "P").lower()
    # A missing file inside /etc and an existing one: same again.
    assert (await refused(served.stub, "/etc/passwd", grpc.StatusCode.PERMISSION_DENIED)).replace(
        "/etc/passwd", "P"
    ) == (await refused(served.stub, "/etc/nope-x", grpc.StatusCode.PERMISSION_DENIED)).replace(
        "/etc/nope-x", "P"
    )


async def test_bad_sources_are_invalid_and_never_echoed_at_length(served: Served) -> None:
    for source in ["relative/dir", "/a\0b", "/" + "a" * 5000]:
        details = await refused(served.stub, source, grpc.StatusCode.INVALID_ARGUMENT)
        assert len(details) < 400
    details = await refused(served.stub, "/etc/" + "x" * 3000, grpc.StatusCode.PERMISSION_DENIED)
    assert len(details) < 400
    await assert_nothing_recorded(served)


async def test_import_under_the_root_still_works(served: Served) -> None:
    model = served.root / "tiny"
    version = await import_dir(served.stub, str(model), "org/tiny")
    manifest = await served.stub.GetManifest(pb.GetManifestRequest(version=version))
    assert manifest.source == str(model.resolve())
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    assert await read_all(served.stub, weights.sha256) == (model / "model.safetensors").read_bytes()
    # The root itself, and a path with ".." that stays inside, are fine too.
    await import_dir(served.stub, f"{served.root}/tiny/sub/..", "org/tiny")


async def test_a_registry_without_roots_imports_no_directory(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    channel, registry, running = await _serve(tmp_path, None)
    try:
        async with channel:
            details = await refused(Stub(channel), str(model), grpc.StatusCode.PERMISSION_DENIED)
            assert "--import-root" in details
    finally:
        await running.stop(0)  # type: ignore[attr-defined]
        registry.close()


async def test_registry_process_reproduces_the_hole_closed(tmp_path: Path) -> None:
    """``python -m registry.server``: no roots by default, --import-root and
    HELIOS_REGISTRY_IMPORT_ROOTS (os.pathsep-separated) add them."""
    root_a, root_b = write_model(tmp_path / "a"), write_model(tmp_path / "b")
    outside = write_model(tmp_path / "c")
    process = ServiceProcess(
        name="registry-roots",
        module="registry.server",
        args=["--data-dir", str(tmp_path / "data"), "--import-root", str(root_a)],
        state_dir=tmp_path / "state",
    )
    await process.start({"HELIOS_REGISTRY_IMPORT_ROOTS": os.pathsep.join([str(root_b)])})
    try:
        await process.wait_ready(60)
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = Stub(channel)
            for source in ["/etc/ssh", str(outside), str(tmp_path / "data")]:
                await refused(stub, source, grpc.StatusCode.PERMISSION_DENIED)
            await import_dir(stub, str(root_a), "org/a")
            await import_dir(stub, str(root_b), "org/b")
            listing = await stub.ListModels(pb.RegistryServiceListModelsRequest())
            assert sorted(v.model_id for v in listing.versions) == ["org/a", "org/b"]
    finally:
        await process.stop(5)


def test_import_root_flag_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from registry.server import build_parser

    monkeypatch.delenv("HELIOS_REGISTRY_IMPORT_ROOTS", raising=False)
    monkeypatch.delenv("HELIOS_IMPORT_ROOTS", raising=False)
    assert build_parser().parse_args([]).import_root == []
    monkeypatch.setenv("HELIOS_REGISTRY_IMPORT_ROOTS", os.pathsep.join(["/a", "/b"]))
    args = build_parser().parse_args(["--import-root", str(tmp_path)])
    assert args.import_root == [Path("/a"), Path("/b"), tmp_path]
    assert build_parser().parse_args(["--max-upload-bytes", "2GiB"]).max_upload_bytes == 2 << 30


# --- UploadModel: the client sends the files ------------------------------------------


def _files(directory: Path) -> list[tuple[str, bytes]]:
    return sorted(
        ("/".join(p.relative_to(directory).parts), p.read_bytes())
        for p in directory.rglob("*")
        if p.is_file()
    )


def upload_messages(
    model_id: str,
    files: list[tuple[str, bytes]],
    *,
    declare: list[tuple[str, int, str]] | None = None,
    piece: int = 700,
) -> list[pb.UploadModelRequest]:
    declared = declare or [
        (path, len(data), hashlib.sha256(data).hexdigest()) for path, data in files
    ]
    messages = [
        pb.UploadModelRequest(
            header=pb.UploadModelHeader(
                model_id=model_id,
                files=[pb.UploadModelFile(path=p, size_bytes=n, sha256=h) for p, n, h in declared],
            )
        )
    ]
    for path, data in files:
        for offset in range(0, len(data), piece):
            messages.append(
                pb.UploadModelRequest(
                    chunk=pb.UploadModelChunk(
                        path=path, offset=offset, data=data[offset : offset + piece]
                    )
                )
            )
    return messages


async def upload(stub: Stub, messages: list[pb.UploadModelRequest]) -> pb.UploadModelResponse:
    """Writes the messages one by one; the registry may end the call before the last one
    (a refused upload): then the call's own status is what counts. (With a request
    iterator grpc.aio reports a write after the end as INTERNAL "Internal error from
    Core" instead, which made the refusal tests flaky.)"""
    call = stub.UploadModel(timeout=30)
    try:
        for message in messages:
            await call.write(message)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call already ended: its status follows
    return await call


# What grpc.aio reports when a client's write races the server's end of the call: its
# _write turns the failed send into a local INTERNAL status (set_internal_error), and the
# status the server sent is lost on the client's side.
WRITE_RACE = (grpc.StatusCode.INTERNAL, "Internal error from Core")


async def upload_fails(stub: Stub, messages: list[pb.UploadModelRequest]) -> grpc.aio.AioRpcError:
    """The error of an upload the registry refuses; an attempt whose status the client's
    own write race replaced (WRITE_RACE) is made again, a few times at most."""
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload(stub, messages)
        if (info.value.code(), info.value.details()) != WRITE_RACE:
            break
    return info.value


async def test_upload_round_trip(served: Served, tmp_path: Path) -> None:
    model = write_model(tmp_path / "client-side")
    (model / "empty.txt").write_bytes(b"")
    files = _files(model)
    reply = await upload(served.stub, upload_messages("Org/Uploaded", files))
    assert reply.version.model_id == "org/uploaded" and len(reply.version.version) == 40
    assert reply.total_bytes == sum(len(d) for _, d in files) and reply.reused_bytes == 0
    manifest = await served.stub.GetManifest(pb.GetManifestRequest(version=reply.version))
    assert manifest.source == "upload"
    assert sorted(f.path for f in manifest.files) == [p for p, _ in files]
    for entry in manifest.files:
        assert await read_all(served.stub, entry.sha256) == dict(files)[entry.path]
    config = await served.stub.GetConfig(pb.GetConfigRequest(version=reply.version))
    assert config.config_json == (model / "config.json").read_text()
    # The same files again: the same version, every byte reused, nothing left staged.
    again = await upload(served.stub, upload_messages("org/uploaded", files))
    assert again.version == reply.version and again.reused_bytes == again.total_bytes
    assert staged_files(served.data) == []
    # An upload and a directory import of the same files make the same version.
    shutil.copytree(model, served.root / "same")
    assert await import_dir(served.stub, str(served.root / "same"), "org/uploaded") == reply.version


async def test_bad_uploads_are_refused_and_nothing_recorded(served: Served) -> None:
    good = [("config.json", b'{"model_type": "llama"}'), ("w.bin", os.urandom(3000))]
    sha = [hashlib.sha256(d).hexdigest() for _, d in good]
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[str, list[pb.UploadModelRequest], grpc.StatusCode]] = [
        (
            "bad hash",
            upload_messages(
                "o/m", good, declare=[("config.json", 23, sha[0]), ("w.bin", 3000, sha[0])]
            ),
            invalid,
        ),
        (
            "declared bigger than sent",
            upload_messages(
                "o/m", good, declare=[("config.json", 23, sha[0]), ("w.bin", 3001, sha[1])]
            ),
            invalid,
        ),
        (
            "declared smaller than sent",
            upload_messages(
                "o/m", good, declare=[("config.json", 23, sha[0]), ("w.bin", 2999, sha[1])]
            ),
            invalid,
        ),
        ("path traversal", upload_messages("o/m", [("../evil", b"x")]), invalid),
        ("absolute path", upload_messages("o/m", [("/etc/passwd", b"x")]), invalid),
        ("NUL in a path", upload_messages("o/m", [("a\0b", b"x")]), invalid),
        ("backslash", upload_messages("o/m", [("a\\..\\b", b"x")]), invalid),
        ("bad model id", upload_messages("../evil", good), invalid),
        ("no files", upload_messages("o/m", []), invalid),
        (
            "declared twice",
            upload_messages("o/m", [good[0]], declare=[("config.json", 23, sha[0])] * 2),
            invalid,
        ),
        (
            "bad sha256",
            upload_messages("o/m", [good[0]], declare=[("config.json", 23, "zz")]),
            invalid,
        ),
        (
            "negative size",
            upload_messages("o/m", [], declare=[("config.json", -1, sha[0])]),
            invalid,
        ),
        (
            "over the limit",
            upload_messages("o/m", [], declare=[("huge.bin", LIMIT + 1, sha[0])]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "over the limit in total",
            upload_messages(
                "o/m",
                [],
                declare=[("a.bin", LIMIT // 2 + 1, sha[0]), ("b.bin", LIMIT // 2, sha[1])],
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "config.json not JSON",
            upload_messages("o/m", [("config.json", b"not json")]),
            invalid,
        ),
    ]
    for name, messages, code in cases:
        error = await upload_fails(served.stub, messages)
        assert error.code() == code, (name, error.code(), error.details())
        assert len(error.details() or "") < 400, name
    await assert_nothing_recorded(served)


async def test_bad_upload_streams_are_refused(served: Served) -> None:
    data = os.urandom(3000)
    files = [("w.bin", data)]
    header, *chunks = upload_messages("o/m", files, piece=1000)

    def chunk(path: str, offset: int, body: bytes) -> pb.UploadModelRequest:
        return pb.UploadModelRequest(chunk=pb.UploadModelChunk(path=path, offset=offset, data=body))

    cases = {
        "no header": chunks,
        "empty stream": [],
        "header twice": [header, header, *chunks],
        "undeclared file": [header, chunk("other.bin", 0, b"x"), *chunks],
        "out of order": [header, chunks[1], chunks[0], chunks[2]],
        "gap": [header, chunks[0], chunks[2]],
        "a chunk over 1 MiB": [header, chunk("w.bin", 0, b"x" * (MAX_UPLOAD_CHUNK + 1))],
        "the stream ends early": [header, chunks[0]],
        "bytes after the file is complete": [header, *chunks, chunk("w.bin", 3000, b"x")],
    }
    for name, messages in cases.items():
        error = await upload_fails(served.stub, messages)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
    await assert_nothing_recorded(served)


async def test_one_file_at_a_time(served: Served) -> None:
    files = [("a.bin", os.urandom(2000)), ("b.bin", os.urandom(2000))]
    header, a0, a1, b0, b1 = upload_messages("o/m", files, piece=1000)
    error = await upload_fails(served.stub, [header, a0, b0, a1, b1])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a.bin" in (error.details() or "")
    await assert_nothing_recorded(served)
    reply = await upload(served.stub, [header, b0, b1, a0, a1])  # any file order is fine
    assert reply.total_bytes == 4000


async def test_uploads_running_at_once_share_the_limit(served: Served) -> None:
    """Two uploads of 60% of the limit each: the second is RESOURCE_EXHAUSTED while the
    first runs (the disk cannot be filled by uploading in parallel)."""
    data = os.urandom(LIMIT * 6 // 10)
    header, *chunks = upload_messages("o/first", [("w.bin", data)], piece=10_000)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[pb.UploadModelRequest]:
        yield header
        yield chunks[0]
        await gate.wait()
        for message in chunks[1:]:
            yield message

    first = asyncio.ensure_future(served.stub.UploadModel(slow(), timeout=30))
    try:
        for _ in range(200):  # until the first upload holds its share
            if served.registry._upload_reserved:
                break
            await asyncio.sleep(0.01)
        assert served.registry._upload_reserved == len(data)
        error = await upload_fails(
            served.stub, upload_messages("o/second", [("w.bin", os.urandom(len(data)))])
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        gate.set()
    assert (await first).total_bytes == len(data)
    assert served.registry._upload_reserved == 0
    # Once it is done, the room is free again.
    await upload(served.stub, upload_messages("o/second", [("w.bin", os.urandom(len(data)))]))


async def test_a_client_that_goes_away_leaves_nothing(served: Served) -> None:
    data = os.urandom(5000)
    header, *chunks = upload_messages("o/gone", [("w.bin", data)], piece=1000)
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[pb.UploadModelRequest]:
        yield header
        yield chunks[0]
        sent.set()
        await asyncio.sleep(60)

    call = served.stub.UploadModel(stalls(), timeout=30)
    await sent.wait()
    for _ in range(200):
        if staged_files(served.data):
            break
        await asyncio.sleep(0.01)
    call.cancel()
    for _ in range(200):
        if not staged_files(served.data) and not served.registry._upload_reserved:
            break
        await asyncio.sleep(0.01)
    await assert_nothing_recorded(served)
    assert served.registry._upload_reserved == 0
