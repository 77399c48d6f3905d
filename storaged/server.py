"""The storaged process: the multi-tier model cache on every node.

    python -m storaged.server --tier ram=/dev/shm/helios:2GiB --tier ssd=/var/cache/helios:200GiB \
        --registry localhost:50051 [--http-base https://blobs.example/blobs] [--peer host:port]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import grpc
from helios.v1 import storage_pb2, storage_pb2_grpc

from runtime.config import ConfigError, add_server_arguments, env_default, settings_from_args
from runtime.server import Cleanup, Register, run
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.manifest import BlobSource
from storaged.remote import PeerSource, RegistryClient
from storaged.servicer import StorageServicer
from storaged.sources import HttpBlobSource
from storaged.tiers import TierConfig, parse_tier_spec

logger = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-storaged", description=SERVICE_NAME)
    add_server_arguments(parser, "storaged")
    tiers = env_default("storaged", "tiers")
    parser.add_argument(
        "--tier",
        action="append",
        default=tiers.split(",") if tiers else [],
        metavar="NAME=PATH:SIZE",
        help="a local tier (ram, nvme, ssd), e.g. ram=/dev/shm/helios:2GiB (repeatable)",
    )
    parser.add_argument(
        "--registry",
        default=env_default("storaged", "registry", "localhost:50051"),
        help="registry address (manifests, and blobs unless --http-base is given)",
    )
    parser.add_argument(
        "--http-base",
        default=env_default("storaged", "http_base"),
        help="fetch blobs with HTTP(S) range GETs from <URL>/<sha256> instead of the registry",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another storaged to try first for a file (ReadChunk), repeatable",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=int(env_default("storaged", "connections", "8")),
        help="chunks downloaded at once",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="pins and versions (default: slowest tier)"
    )
    return parser


def default_tier() -> str:
    """Without --tier (e.g. a bare `helios up`): one 10 GiB SSD tier in the temp dir."""
    import tempfile

    return f"ssd={Path(tempfile.gettempdir()) / f'helios-storaged-{os.getuid()}'}:10GiB"


def parse_tiers(specs: Sequence[str]) -> list[TierConfig]:
    if not specs:
        logger.warning("no --tier given; using %s", default_tier())
        specs = [default_tier()]
    try:
        return [parse_tier_spec(s) for s in specs]
    except ValueError as exc:
        raise ConfigError("tier", str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "storaged")
    tiers = parse_tiers(args.tier)
    if args.connections < 1:
        raise ConfigError("connections", "must be >= 1")

    async def build() -> tuple[Register, Cleanup]:
        registry = RegistryClient(args.registry)
        peers = [PeerSource(p) for p in args.peer]
        remote: BlobSource = HttpBlobSource(args.http_base) if args.http_base else registry
        downloader = ChunkedDownloader([*peers, remote], connections=args.connections)
        cache = ModelCache(tiers, registry, downloader, state_dir=args.state_dir)
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

    run(settings, build)


if __name__ == "__main__":
    main()
