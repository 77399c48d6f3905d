"""`helios up`: the whole local mesh, each service its own process, Envoy in front.

The flags and the options they make are cli/up_options.py's; starting, supervising and
stopping the processes cli/mesh_services.py's. This module runs the mesh until Ctrl-C or
SIGTERM: the ready file, the mesh file `helios` commands find it by, and the banner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from cli.keys import admin_key_path
from cli.mesh import remove_mesh_file, write_mesh_file
from cli.mesh_services import Mesh
from cli.processes import Restart, ServiceStartError
from cli.up_options import MeshOptions, mesh_options

# `helios up`'s records, whichever of its modules writes them.
logger = logging.getLogger("helios.up")


def up_command(args: argparse.Namespace) -> int:
    return asyncio.run(run_mesh(mesh_options(args)))


async def run_mesh(options: MeshOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mesh = Mesh(options)
    try:
        start = asyncio.ensure_future(mesh.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
            print("Stopped before the mesh was up.", flush=True)
            return 130
        stopper.cancel()
        start.result()  # raises a start failure
        _publish(mesh)
        print(_banner(mesh), flush=True)

        async def restarted(restart: Restart) -> None:
            logger.warning(
                "service restarted",
                extra={
                    "service": restart.service,
                    "exit_code": restart.exit_code,
                    "attempt": restart.attempt,
                    "delay_s": restart.delay_s,
                },
            )
            print(restart.describe(), flush=True)
            _publish(mesh)  # new pids (and Envoy's admin port)

        mesh.supervise(restarted)
        await stop.wait()
        print("Stopping Helios...", flush=True)
        return 0
    except ServiceStartError as exc:
        print(f"Helios failed to start: {exc}", flush=True)
        return 1
    finally:
        remove_mesh_file(str(options.state_dir))
        await mesh.stop()
        if options.ready_file is not None:
            options.ready_file.unlink(missing_ok=True)


def _publish(mesh: Mesh) -> None:
    """The mesh's addresses in --ready-file and in the mesh file (how `helios` commands
    find this mesh: cli/mesh.py)."""
    summary = mesh.summary()
    if mesh.options.ready_file is not None:
        _write_json_atomically(mesh.options.ready_file, summary)
    write_mesh_file(summary)


def _banner(mesh: Mesh) -> str:
    options = mesh.options
    summary = mesh.summary()
    return (
        f"Helios is up ({mesh.startup_seconds:.1f}s).\n"
        f"  OpenAI REST base URL: {summary['rest_url']}\n"
        f"  gRPC front door:      {summary['grpc_address']}\n"
        f"  models:               {', '.join(summary['models'])}\n"
        f"  engine:               {options.engine_reason}\n"
        f"  API keys:             {len(options.api_keys) or 'none (the API is open)'}\n"
        f"  admin key:            {_admin_key_source(options.admin_key)}\n"
        f"  logs:                 {options.state_dir / 'logs'}\n"
        "Press Ctrl-C to stop."
    )


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def _admin_key_source(key: str) -> str:
    """Where the admin key can be read (never the key itself: logs are kept)."""
    try:
        if admin_key_path().read_text(encoding="utf-8").strip() == key:
            return str(admin_key_path())
    except OSError:
        pass
    return "as given (--admin-key / HELIOS_ADMIN_KEY)"
