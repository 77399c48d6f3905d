"""``helios pull``: import a model into the registry, with progress bars.

``helios pull ./dir --as org/name`` imports a local HF-layout directory (a directory with
a peft adapter_config.json is a LoRA adapter: ``--base org/name`` names its base model,
else the one its base_model_name_or_path names; registry/adapters.py);
``helios pull org/name[@revision]`` imports from the Hugging Face Hub ($HF_ENDPOINT,
$HF_TOKEN). Where the import goes:

* the running mesh (found as cli/mesh.py says: ``--address``, ``$HELIOS_ADDRESS``, the
  local mesh of ``$HELIOS_HOME``, ``$HELIOS_PORT``): through its front door with the
  admin key (registry writes are admin-only there). A directory's files are read here and
  uploaded (UploadModel: the registry never reads a path a client names); a Hub import
  runs in the registry (ImportModel). The running registry serves the model at once
  (``/v1/models`` lists it).
* ``--registry HOST:PORT``: the same, straight to a registry's own port.
* no mesh runs, or ``--data-dir``: the registry's files are opened in-process (the
  embedded registry), and the command says so. Never while a mesh runs on them: that
  registry would not know of the import until it restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from cli.keys import bearer, read_admin_key
from cli.mesh import add_address_argument, find_front_door
from registry.import_progress import ImportProgress
from registry.upload import MAX_UPLOAD_CHUNK as UPLOAD_CHUNK

__all__ = ["add_pull_command", "pull_command"]


def add_pull_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pull`` to the ``helios`` sub-commands."""
    from registry.settings import default_data_dir

    pull = subparsers.add_parser(
        "pull", help="import a model (local directory or Hub repo) into the registry"
    )
    pull.add_argument("source", help="./dir (with --as) or org/name[@revision] on the Hub")
    pull.add_argument("--as", dest="model_id", default="", help="model id to import as")
    pull.add_argument(
        "--base",
        default="",
        help="a LoRA adapter's base model (registry id); default: the model its"
        " adapter_config.json names, when the registry holds it",
    )
    pull.add_argument("--allow", action="append", default=[], help="glob of files to keep")
    pull.add_argument("--deny", action="append", default=[], help="glob of files to drop")
    pull.add_argument("--registry", default="", help="address of a running registry")
    add_address_argument(pull)
    pull.add_argument(
        "--admin-key",
        default=None,
        help="the mesh's admin key (default: $HELIOS_ADMIN_KEY, else $HELIOS_HOME/admin-key)",
    )
    pull.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"import in-process into this registry directory (default when no mesh runs:"
        f" {default_data_dir()})",
    )
    pull.add_argument("--hf-endpoint", default=os.environ.get("HF_ENDPOINT", ""))
    pull.add_argument("--no-progress", action="store_true", help="no progress bars")
    pull.set_defaults(handler=pull_command)
    return pull


def source_of(text: str) -> str:
    """A directory path stays one; anything else is a Hub reference."""
    if text.startswith(("hf://", "/", "./", "../", "~")) or Path(text).is_dir():
        return str(Path(text).expanduser().resolve()) if not text.startswith("hf://") else text
    return f"hf://{text}"


async def _embedded(args: argparse.Namespace, source: str) -> AsyncIterator[ImportProgress]:
    from registry.core import Registry
    from registry.hub import HubClient

    registry = await asyncio.to_thread(
        Registry.open, args.data_dir, hub=HubClient(args.hf_endpoint or None)
    )
    try:
        async for progress in registry.import_source(
            source, args.model_id, args.allow, args.deny, base=args.base
        ):
            yield progress
    finally:
        registry.close()


Metadata = tuple[tuple[str, str], ...]


async def _remote(
    args: argparse.Namespace, source: str, address: str, metadata: Metadata
) -> AsyncIterator[ImportProgress]:
    from helios.v1 import registry_pb2 as pb
    from helios.v1 import registry_pb2_grpc

    from runtime.channels import create_channel

    async with create_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = pb.ImportModelRequest(
            source=source,
            model_id=args.model_id,
            allow_patterns=args.allow,
            deny_patterns=args.deny,
            base=args.base,
        )
        async for r in stub.ImportModel(request, metadata=metadata):
            yield ImportProgress(
                file=r.file,
                file_bytes_done=r.file_bytes_done,
                file_bytes_total=r.file_bytes_total,
                bytes_done=r.bytes_done,
                bytes_total=r.bytes_total,
                files_done=r.files_done,
                files_total=r.files_total,
                reused_bytes=r.reused_bytes,
                version=(r.version.model_id, r.version.version) if r.HasField("version") else None,
            )


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_CHUNK):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


async def _upload(
    args: argparse.Namespace, directory: Path, address: str, metadata: Metadata
) -> AsyncIterator[ImportProgress]:
    """Send the directory's files to the registry (UploadModel): it reads nothing of this
    machine's filesystem itself. The files are hashed first (the header declares every
    file's size and SHA-256), then written message by message; progress counts the bytes
    sent. When the registry ends the call early (it refuses the upload), the call's own
    status is the answer: with a request iterator grpc.aio reported a write after the end
    as INTERNAL 'Internal error from Core' instead."""
    from helios.v1 import registry_pb2 as pb
    from helios.v1 import registry_pb2_grpc

    from registry.local_files import list_directory
    from runtime.channels import create_channel

    files = await asyncio.to_thread(list_directory, directory, args.allow, args.deny)
    declared: list[tuple[str, Path, int, str]] = []
    for index, (rel, path) in enumerate(files):
        size, sha256 = await asyncio.to_thread(_hash_file, path)
        declared.append((rel, path, size, sha256))
        yield ImportProgress(file=f"hashing {rel}", files_done=index, files_total=len(files))
    total = sum(size for _, _, size, _ in declared)
    header = pb.UploadModelHeader(
        model_id=args.model_id,
        base=args.base,
        files=[
            pb.UploadModelFile(path=rel, size_bytes=size, sha256=sha256)
            for rel, _, size, sha256 in declared
        ],
    )
    async with create_channel(address) as channel:
        call = registry_pb2_grpc.RegistryServiceStub(channel).UploadModel(metadata=metadata)
        try:
            await call.write(pb.UploadModelRequest(header=header))
            sent = 0
            for index, (rel, path, size, _) in enumerate(declared):
                with path.open("rb") as f:
                    offset = 0
                    while data := await asyncio.to_thread(f.read, UPLOAD_CHUNK):
                        chunk = pb.UploadModelChunk(path=rel, offset=offset, data=data)
                        await call.write(pb.UploadModelRequest(chunk=chunk))
                        offset += len(data)
                        sent += len(data)
                        yield ImportProgress(
                            file=rel,
                            file_bytes_done=offset,
                            file_bytes_total=size,
                            bytes_done=sent,
                            bytes_total=total,
                            files_done=index + (offset >= size),
                            files_total=len(declared),
                        )
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The call ended before the last write: `await call` raises its status.
            if not call.done():
                raise
        reply = await call
    yield ImportProgress(
        bytes_done=total,
        bytes_total=total,
        files_done=len(declared),
        files_total=len(declared),
        reused_bytes=reply.reused_bytes,
        version=(reply.version.model_id, reply.version.version),
    )


def _target(args: argparse.Namespace, source: str) -> AsyncIterator[ImportProgress]:
    """Where the import goes (see the module docstring); says so when in-process."""
    from registry.settings import default_data_dir

    if args.registry:
        address, metadata = args.registry, bearer(args.admin_key or read_admin_key())
    elif args.data_dir is not None:
        return _embedded(args, source)
    else:
        front_door = find_front_door(args.address)
        if front_door is None:
            args.data_dir = default_data_dir()
            print(
                f"helios pull: no running mesh found; importing into the registry at"
                f" {args.data_dir} in-process (the next `helios up` serves it)",
                file=sys.stderr,
            )
            return _embedded(args, source)
        print(
            f"helios pull: through the mesh at {front_door.address} ({front_door.found_by})",
            file=sys.stderr,
        )
        address, metadata = front_door.address, bearer(args.admin_key or read_admin_key())
    if source.startswith("hf://"):  # the registry fetches from the Hub itself
        return _remote(args, source, address, metadata)
    return _upload(args, Path(source), address, metadata)


async def _pull(args: argparse.Namespace) -> tuple[str, str] | None:
    from tqdm import tqdm

    source = source_of(args.source)
    stream = _target(args, source)
    disable = args.no_progress
    overall = tqdm(desc="total", unit="B", unit_scale=True, disable=disable, position=0)
    current = tqdm(desc="", unit="B", unit_scale=True, disable=disable, position=1, leave=False)
    file = None
    result = None
    try:
        async for p in stream:
            overall.total = p.bytes_total
            overall.n = p.bytes_done
            overall.set_postfix(files=f"{p.files_done}/{p.files_total}", reused=p.reused_bytes)
            if p.file != file:
                file = p.file
                current.reset(total=p.file_bytes_total)
                current.set_description(p.file)
            current.n = p.file_bytes_done
            current.refresh()
            overall.refresh()
            if p.version is not None:
                result = p.version
    finally:
        current.close()
        overall.close()
    return result


def pull_command(args: argparse.Namespace) -> int:
    from runtime.errors import HeliosError

    try:
        version = asyncio.run(_pull(args))
    except HeliosError as exc:
        print(f"helios pull: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.aio.AioRpcError):
            print(f"helios pull: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise
    if version is None:
        print("helios pull: the import ended without a version", file=sys.stderr)
        return 1
    print(f"{version[0]}@{version[1]}")
    return 0
