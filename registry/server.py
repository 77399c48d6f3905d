"""The registry process: serves helios.v1.RegistryService over a data directory
(SQLite metadata + a blob store) and, optionally, the Hugging Face Hub."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import grpc
from helios.v1 import registry_pb2, registry_pb2_grpc

from registry.azure_store import AzureBlobStore
from registry.blobs import DEFAULT_CHUNK_SIZE, BlobStore, LocalBlobStore
from registry.cloud import DEFAULT_PART_SIZE
from registry.core import Registry
from registry.hub import HubClient
from registry.s3_store import S3BlobStore
from registry.servicer import RegistryServicer
from registry.upload import DEFAULT_MAX_UPLOAD_BYTES
from runtime.config import (
    ConfigError,
    add_server_arguments,
    env_default,
    helios_home,
    settings_from_args,
)
from runtime.paths import PathRoots, split_roots
from runtime.server import Cleanup, Register, run

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
BACKENDS = ("local", "s3", "azure")


def default_data_dir() -> Path:
    return helios_home() / "registry"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-registry", description=SERVICE.full_name)
    add_server_arguments(parser, "registry")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env_default("registry", "data_dir", str(default_data_dir()))),
        help="SQLite metadata and (local backend) blobs; default $HELIOS_HOME/registry",
    )
    parser.add_argument(
        "--blob-backend",
        choices=BACKENDS,
        default=env_default("registry", "blob_backend", "local"),
        help="where blob bytes live: local (under --data-dir/blobs), s3 or azure",
    )
    add_s3_arguments(parser)
    add_azure_arguments(parser)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=int(env_default("registry", "chunk_size", str(DEFAULT_CHUNK_SIZE))),
        help="bytes per hashed chunk in manifests",
    )
    parser.add_argument(
        "--import-root",
        action="append",
        type=Path,
        default=split_roots(env_default("registry", "import_roots")),
        metavar="DIR",
        help="a directory ImportModel may import from, with everything below it (repeatable;"
        f" env HELIOS_REGISTRY_IMPORT_ROOTS, {os.pathsep!r}-separated). Default: none, no"
        " server directory is importable over the network (clients use UploadModel)",
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=_size_arg,
        default=_size_arg(
            env_default("registry", "max_upload_bytes", str(DEFAULT_MAX_UPLOAD_BYTES))
        ),
        help="the most bytes UploadModel accepts, over the uploads running at once"
        " (e.g. 64GiB, the default)",
    )
    parser.add_argument(
        "--hf-endpoint",
        default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
        help="Hugging Face Hub endpoint (default $HF_ENDPOINT)",
    )
    parser.add_argument(
        "--hf-token-env",
        default="HF_TOKEN",
        help="name of the environment variable holding the Hub token",
    )
    return parser


def _size_arg(text: str) -> int:
    """A byte count: ``16777216``, ``16MiB``, ``8M``, ``512KiB``."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(value[:-1]) * units[value[-1]]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r}") from None


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    """S3 settings (flags, else ``HELIOS_REGISTRY_S3_*`` / ``HELIOS_S3_*``). Credentials
    come from the standard AWS chain (``AWS_ACCESS_KEY_ID``..., profiles, instance roles)."""
    group = parser.add_argument_group("s3 blob backend")
    group.add_argument("--s3-bucket", default=env_default("registry", "s3_bucket", ""))
    group.add_argument(
        "--s3-prefix",
        default=env_default("registry", "s3_prefix", ""),
        help="key prefix; blobs live at <prefix>/blobs/sha256/<aa>/<sha256>",
    )
    group.add_argument(
        "--s3-endpoint-url",
        default=env_default("registry", "s3_endpoint_url", None),
        help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL_S3)",
    )
    group.add_argument("--s3-region", default=env_default("registry", "s3_region", None))
    group.add_argument(
        "--s3-addressing-style",
        choices=("auto", "path", "virtual"),
        default=env_default("registry", "s3_addressing_style", "auto"),
    )
    group.add_argument(
        "--s3-part-size",
        type=_size_arg,
        default=_size_arg(env_default("registry", "s3_part_size", str(DEFAULT_PART_SIZE))),
        help="multipart part size (>= 5MiB); blobs up to one part go up in one PUT",
    )
    group.add_argument(
        "--s3-create-bucket",
        action="store_true",
        default=env_default("registry", "s3_create_bucket", "") in ("1", "true", "yes"),
        help="create the bucket when it does not exist (emulators, development)",
    )


def add_azure_arguments(parser: argparse.ArgumentParser) -> None:
    """Azure Blob settings (flags, else ``HELIOS_REGISTRY_AZURE_*`` / ``HELIOS_AZURE_*``)."""
    group = parser.add_argument_group("azure blob backend")
    group.add_argument("--azure-container", default=env_default("registry", "azure_container", ""))
    group.add_argument(
        "--azure-prefix",
        default=env_default("registry", "azure_prefix", ""),
        help="name prefix; blobs live at <prefix>/blobs/sha256/<aa>/<sha256>",
    )
    group.add_argument(
        "--azure-connection-string-env",
        default=env_default(
            "registry", "azure_connection_string_env", "AZURE_STORAGE_CONNECTION_STRING"
        ),
        help="name of the environment variable holding the storage connection string",
    )
    group.add_argument(
        "--azure-block-size",
        type=_size_arg,
        default=_size_arg(env_default("registry", "azure_block_size", str(DEFAULT_PART_SIZE))),
        help="bytes per staged block",
    )
    group.add_argument(
        "--azure-create-container",
        action="store_true",
        default=env_default("registry", "azure_create_container", "") in ("1", "true", "yes"),
        help="create the container when it does not exist (Azurite, development)",
    )


def make_blob_store(args: argparse.Namespace) -> BlobStore:
    """The configured blob store, checked (bucket/container reachable). Blocking."""
    if args.blob_backend == "local":
        return LocalBlobStore(args.data_dir / "blobs")
    if args.blob_backend == "s3":
        s3 = S3BlobStore.connect(
            args.s3_bucket,
            args.s3_prefix,
            endpoint_url=args.s3_endpoint_url,
            region=args.s3_region,
            addressing_style=args.s3_addressing_style,
            part_size=args.s3_part_size,
        )
        s3.check(create=args.s3_create_bucket)
        return s3
    if args.blob_backend == "azure":
        connection_string = os.environ.get(args.azure_connection_string_env, "")
        if not connection_string:
            raise ConfigError(
                "azure_connection_string_env",
                f"${args.azure_connection_string_env} is empty; set it to the storage "
                "account's connection string",
            )
        azure = AzureBlobStore.connect(
            connection_string,
            args.azure_container,
            args.azure_prefix,
            block_size=args.azure_block_size,
        )
        azure.check(create=args.azure_create_container)
        return azure
    raise ConfigError("blob_backend", f"unknown backend {args.blob_backend!r}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "registry")
    if args.chunk_size < 1:
        raise ConfigError("chunk_size", "must be >= 1")
    if args.max_upload_bytes < 0:
        raise ConfigError("max_upload_bytes", "must be >= 0")
    for root in args.import_root:
        if not root.expanduser().is_dir():
            raise ConfigError("import_root", f"{root} is not a directory")
    import_roots = PathRoots(args.import_root)

    async def build() -> tuple[Register, Cleanup]:
        hub = HubClient(args.hf_endpoint, os.environ.get(args.hf_token_env) or None)
        store = await asyncio.to_thread(make_blob_store, args)
        registry = await asyncio.to_thread(
            Registry.open,
            args.data_dir,
            store,
            chunk_size=args.chunk_size,
            hub=hub,
            max_upload_bytes=args.max_upload_bytes,
        )
        servicer = RegistryServicer(registry, import_roots=import_roots)

        def register(server: grpc.aio.Server) -> list[str]:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
            return [SERVICE.full_name]

        async def cleanup() -> None:
            registry.close()

        return register, cleanup

    run(settings, build)


if __name__ == "__main__":
    main()
