"""``helios cache``: storaged's tiers and contents as tables."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
from helios.v1 import storage_pb2 as pb
from helios.v1 import storage_pb2_grpc

from cli.keys import bearer, read_admin_key
from cli.mesh import add_address_argument, find_front_door
from storaged.tiers import format_bytes

_TIER_NAMES = {
    pb.CACHE_TIER_UNSPECIFIED: "-",
    pb.CACHE_TIER_RAM: "ram",
    pb.CACHE_TIER_NVME: "nvme",
    pb.CACHE_TIER_SSD: "ssd",
    pb.CACHE_TIER_REMOTE: "remote",
}


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def render(stats: Any) -> str:
    tiers = [
        [
            _TIER_NAMES.get(t.tier, "?"),
            t.path,
            format_bytes(t.used_bytes),
            format_bytes(t.capacity_bytes),
            f"{100 * t.used_bytes / t.capacity_bytes:.0f}%" if t.capacity_bytes else "-",
            str(t.files),
            str(t.hits),
            str(t.evictions),
            str(t.demotions),
        ]
        for t in stats.tiers
    ]
    now = time.time()
    models = [
        [
            m.model_id,
            m.version[:12],
            _TIER_NAMES.get(m.tier, "?"),
            format_bytes(m.size_bytes),
            "yes" if m.pinned else "",
            f"{max(0, now - m.last_access_unix):.0f}s ago",
            m.local_dir,
        ]
        for m in stats.models
    ]
    return "\n".join(
        [
            _table(
                ["TIER", "PATH", "USED", "CAPACITY", "USE", "FILES", "HITS", "EVICTED", "DEMOTED"],
                tiers,
            ),
            "",
            _table(["MODEL", "VERSION", "TIER", "SIZE", "PINNED", "LAST USE", "DIR"], models),
            "",
            f"hit rate {100 * stats.hit_rate:.1f}%  downloaded "
            f"{format_bytes(stats.downloaded_bytes)}  last download "
            f"{format_bytes(stats.download_bytes_per_second)}/s",
        ]
    )


async def _fetch(target: str, deadline_s: float, admin_key: str | None) -> Any:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        return await stub.GetStats(
            pb.GetStatsRequest(), timeout=deadline_s, metadata=bearer(admin_key)
        )


def cache_command(args: argparse.Namespace) -> int:
    """storaged's figures: straight from ``--storaged``, else through the mesh's front
    door (cli/mesh.py finds it; GetStats is admin-only there: the admin key goes along)."""
    if args.storaged:
        target, where = args.storaged, f"storaged at {args.storaged}"
    else:
        front_door = find_front_door(args.address)
        if front_door is None:
            print("helios cache: no running mesh found (--address, or --storaged HOST:PORT)")
            return 1
        target, where = front_door.address, f"the mesh at {front_door.address}"
    try:
        stats = asyncio.run(_fetch(target, args.timeout, args.admin_key or read_admin_key()))
    except grpc.aio.AioRpcError as exc:
        print(f"helios cache: {where}: {exc.code().name}: {exc.details()}")
        return 1
    print(render(stats))
    return 0


def add_cache_command(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cache", help="show storaged's tiers and cached models"
    )
    parser.add_argument(
        "--storaged", default="", help="a storaged's own address (default: the mesh's)"
    )
    add_address_argument(parser)
    parser.add_argument(
        "--admin-key",
        default=None,
        help="the mesh's admin key (default: $HELIOS_ADMIN_KEY, else $HELIOS_HOME/admin-key)",
    )
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.set_defaults(handler=cache_command)
    return parser
