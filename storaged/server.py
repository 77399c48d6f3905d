"""The storaged process: the multi-tier model cache on every node.

    python -m storaged.server --tier ram=/dev/shm/helios:2GiB --tier ssd=/var/cache/helios:200GiB \
        --registry localhost:50051 [--http-base https://blobs.example/blobs] [--peer host:port]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import grpc
from helios.v1 import storage_pb2, storage_pb2_grpc

from runtime.config import add_server_arguments
from runtime.server import Cleanup, Register, run
from runtime.settings import add_arguments, parse_settings
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.manifest import BlobSource
from storaged.remote import PeerSource, RegistryClient
from storaged.servicer import StorageServicer
from storaged.settings import StoragedSettings
from storaged.sources import HttpBlobSource

logger = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-storaged", description=SERVICE_NAME)
    add_server_arguments(parser, "storaged")
    return add_arguments(parser, StoragedSettings, "storaged")


async def build_service(settings: StoragedSettings) -> tuple[Register, Cleanup]:
    """The tiered cache, its sources and the servicer, inside the running loop."""
    tiers = settings.tiers
    registry = RegistryClient(settings.registry)
    peers = [PeerSource(p) for p in settings.peer]
    remote: BlobSource = HttpBlobSource(settings.http_base) if settings.http_base else registry
    downloader = ChunkedDownloader([*peers, remote], connections=settings.connections)
    cache = ModelCache(tiers, registry, downloader, state_dir=settings.state_dir)
    servicer = StorageServicer(cache)
    logger.info(
        "tiers",
        extra={"tiers": [f"{t.tier.name.lower()}={t.path}:{t.capacity_bytes}" for t in tiers]},
    )

    def register(server: grpc.aio.Server) -> list[str]:
        storage_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def cleanup() -> None:
        await cache.close()
        for p in peers:
            await p.close()
        await registry.close()

    return register, cleanup


def main(argv: Sequence[str] | None = None) -> None:
    server, settings = parse_settings(build_parser(), StoragedSettings, "storaged", argv)

    async def build() -> tuple[Register, Cleanup]:
        return await build_service(settings)

    run(server, build)


if __name__ == "__main__":
    main()
