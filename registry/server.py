"""The registry process: serves helios.v1.RegistryService over a data directory
(SQLite metadata + a blob store) and, optionally, the Hugging Face Hub."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

import grpc
from helios.v1 import registry_pb2, registry_pb2_grpc

from registry.azure_store import AzureBlobStore
from registry.blobs import BlobStore, LocalBlobStore
from registry.core import Registry
from registry.hub import HubClient
from registry.s3_store import S3BlobStore
from registry.servicer import RegistryServicer
from registry.settings import RegistrySettings
from runtime.config import ConfigError, add_server_arguments
from runtime.paths import PathRoots
from runtime.server import Cleanup, Register, run
from runtime.settings import add_arguments, parse_settings

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-registry", description=SERVICE.full_name)
    add_server_arguments(parser, "registry")
    return add_arguments(parser, RegistrySettings, "registry")


def make_blob_store(settings: RegistrySettings) -> BlobStore:
    """The configured blob store, checked (bucket/container reachable). Blocking."""
    if settings.blob_backend == "s3":
        s3 = S3BlobStore.connect(
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
            part_size=settings.s3_part_size,
        )
        s3.check(create=settings.s3_create_bucket)
        return s3
    if settings.blob_backend == "azure":
        variable = settings.azure_connection_string_env
        connection_string = os.environ.get(variable, "")
        if not connection_string:
            raise ConfigError(
                "azure_connection_string_env",
                f"${variable} is empty; set it to the storage account's connection string",
            )
        azure = AzureBlobStore.connect(
            connection_string,
            settings.azure_container,
            settings.azure_prefix,
            block_size=settings.azure_block_size,
        )
        azure.check(create=settings.azure_create_container)
        return azure
    return LocalBlobStore(settings.data_dir / "blobs")  # blob_backend is one of BACKENDS


async def build_service(settings: RegistrySettings) -> tuple[Register, Cleanup]:
    """The registry over its data directory and blob store, inside the running loop."""
    hub = HubClient(settings.hf_endpoint, os.environ.get(settings.hf_token_env) or None)
    store = await asyncio.to_thread(make_blob_store, settings)
    registry = await asyncio.to_thread(
        Registry.open,
        settings.data_dir,
        store,
        chunk_size=settings.chunk_size,
        hub=hub,
        max_upload_bytes=settings.max_upload_bytes,
    )
    servicer = RegistryServicer(registry, import_roots=PathRoots(settings.import_root))

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return [SERVICE.full_name]

    async def cleanup() -> None:
        registry.close()

    return register, cleanup


def main(argv: Sequence[str] | None = None) -> None:
    server, settings = parse_settings(build_parser(), RegistrySettings, "registry", argv)

    async def build() -> tuple[Register, Cleanup]:
        return await build_service(settings)

    run(server, build)


if __name__ == "__main__":
    main()
