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

from registry.blobs import DEFAULT_CHUNK_SIZE, BlobStore, LocalBlobStore
from registry.core import Registry
from registry.hub import HubClient
from registry.servicer import RegistryServicer
from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
# S3 and Azure backends (registry/cloud.py) are not written yet; "local" is the only one.
BACKENDS = ("local",)


def default_data_dir() -> Path:
    home = os.environ.get("HELIOS_HOME") or str(Path.home() / ".helios")
    return Path(home) / "registry"


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
        help="where blob bytes live: local (under --data-dir/blobs)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=int(env_default("registry", "chunk_size", str(DEFAULT_CHUNK_SIZE))),
        help="bytes per hashed chunk in manifests",
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


def make_blob_store(args: argparse.Namespace) -> BlobStore:
    if args.blob_backend == "local":
        return LocalBlobStore(args.data_dir / "blobs")
    raise ConfigError("blob_backend", f"unknown backend {args.blob_backend!r}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "registry")
    if args.chunk_size < 1:
        raise ConfigError("chunk_size", "must be >= 1")

    async def build() -> tuple[Register, Cleanup]:
        hub = HubClient(args.hf_endpoint, os.environ.get(args.hf_token_env) or None)
        store = await asyncio.to_thread(make_blob_store, args)
        registry = await asyncio.to_thread(
            Registry.open, args.data_dir, store, chunk_size=args.chunk_size, hub=hub
        )
        servicer = RegistryServicer(registry)

        def register(server: grpc.aio.Server) -> list[str]:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
            return [SERVICE.full_name]

        async def cleanup() -> None:
            registry.close()

        return register, cleanup

    run(settings, build)


if __name__ == "__main__":
    main()
