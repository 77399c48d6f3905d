"""`helios status`: the mesh's agents, models and states as tables (AdminService)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from helios.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

from cli.keys import bearer, read_admin_key
from cli.mesh import add_address_argument, find_front_door

DEFAULT_ADDRESS = "127.0.0.1:8080"
# The order a load goes through its phases (worker/load_phases.py's PHASES; a test keeps
# the two equal: cli/ does not import the worker).
LOAD_PHASE_ORDER = ("fetch", "engine_start", "weights", "kv_cache", "compile", "wake")


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, a header line and a rule."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_load(phases: Mapping[str, float]) -> str:
    """``fetch 1.10s, engine_start 22.91s`` in load order; ``-`` for none."""
    order = {name: i for i, name in enumerate(LOAD_PHASE_ORDER)}
    names = sorted(phases, key=lambda n: (order.get(n, len(order)), n))
    return ", ".join(f"{n} {phases[n]:.2f}s" for n in names) or "-"


def render(
    health: admin_pb2.GetHealthResponse,
    stats: admin_pb2.GetMemoryStatsResponse,
    models: inference_pb2.ListModelsResponse,
    status: admin_pb2.GetStatusResponse | None = None,
) -> str:
    loads = {m.model: dict(m.load_phase_seconds) for m in status.models} if status else {}
    agents = table(
        [
            "AGENT",
            "ADDRESS",
            "STATE",
            "HEALTHY",
            "IN FLIGHT",
            "TOTAL MiB",
            "FREE MiB",
            "MEMORY",
            "MODELS",
        ],
        [
            [
                w.worker_id or "?",
                w.address,
                w.state,
                "yes" if w.healthy else "no",
                w.outstanding,
                _mib(w.total_bytes),
                _mib(w.free_bytes),
                w.memory_source or "-",
                ", ".join(_model_state(m.model, m.state, m.cache_level) for m in w.model_states)
                or "-",
            ]
            for w in stats.workers
        ],
    )
    model_table = table(
        ["MODEL", "WARM", "READY", "MIN", "MAX", "NEED MiB", "NEED FROM", "LAST LOAD"],
        [
            [
                m.id,
                m.warm_status or "-",
                m.ready_replicas,
                m.min_replicas,
                m.max_replicas,
                _mib(int(m.memory_bytes)) if m.memory_bytes else "-",
                m.memory_source or "-",
                describe_load(loads.get(m.id, {})),
            ]
            for m in models.data
        ],
    )
    head = (
        f"mesh: {health.status}  workers: {health.healthy_workers}/{health.total_workers}"
        f"  memory pressure: {health.memory_pressure:.0%}"
    )
    return f"{head}\n\n{agents}\n\n{model_table}"


async def fetch_status(address: str, deadline_s: float, admin_key: str | None = None) -> str:
    """The status through the front door; ``admin_key`` defaults to the mesh's own
    (``HELIOS_ADMIN_KEY`` or ``$HELIOS_HOME/admin-key``, as `helios up` keeps it)."""
    metadata = bearer(admin_key or read_admin_key())
    async with grpc.aio.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        health, stats, models = await asyncio.gather(
            admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=deadline_s, metadata=metadata),
            admin.GetMemoryStats(
                admin_pb2.GetMemoryStatsRequest(), timeout=deadline_s, metadata=metadata
            ),
            inference.ListModels(
                inference_pb2.ListModelsRequest(), timeout=deadline_s, metadata=metadata
            ),
        )
        try:  # the load phases; a proxy built without a status reporter has none
            status = await admin.GetStatus(
                admin_pb2.GetStatusRequest(), timeout=deadline_s, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            status = None
    return render(health, stats, models, status)


def status_command(args: argparse.Namespace) -> int:
    front_door = find_front_door(args.address)
    address = front_door.address if front_door is not None else DEFAULT_ADDRESS
    try:
        print(asyncio.run(fetch_status(address, args.timeout, args.admin_key)))
    except grpc.aio.AioRpcError as error:
        print(f"helios status: {address}: {error.code().name}: {error.details()}")
        if front_door is None:
            print("helios status: no running mesh found (see helios status --help: --address)")
        return 1
    return 0


def add_status_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``status`` to the ``helios`` sub-commands (``parser.add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="agents, models and their states (from the proxy's AdminService)"
    )
    p.add_argument(
        "--admin-key",
        default=None,
        help="the mesh's admin key (default: $HELIOS_ADMIN_KEY, else $HELIOS_HOME/admin-key)",
    )
    add_address_argument(p)
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(handler=status_command)
    return p


def _model_state(model: str, state: str, cache_level: str) -> str:
    """``model:state``, and where its files are when it is not on the GPU (``@ram``)."""
    where = f"@{cache_level}" if cache_level not in ("", "gpu") else ""
    return f"{model}:{state}{where}"
