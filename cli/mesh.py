"""How a `helios` command finds the mesh it talks to.

`helios up` writes ``$HELIOS_HOME/mesh.json`` once the mesh is up (the same summary as
``--ready-file``: the front door's address, Envoy's pid, ...) and removes it when it
stops. A command that talks to a service goes through the front door of, in order:

1. ``--address HOST:PORT`` (a command's flag), else ``$HELIOS_ADDRESS``;
2. the running local mesh: ``$HELIOS_HOME/mesh.json`` whose Envoy is alive;
3. ``127.0.0.1:$HELIOS_PORT`` when ``HELIOS_PORT`` is set (a mesh started elsewhere
   with that port).

None of them: there is no mesh to talk to (``helios pull`` then imports into the
registry's files in-process, and says so).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.config import helios_home
from runtime.files import write_json_atomic

MESH_FILE = "mesh.json"
ADDRESS_ENV = "HELIOS_ADDRESS"
PORT_ENV = "HELIOS_PORT"


@dataclass(frozen=True)
class FrontDoor:
    """Where a command's calls go, and why there."""

    address: str  # host:port of the front door (Envoy), for gRPC and REST
    found_by: str  # "--address", "$HELIOS_ADDRESS", the mesh file's path, "$HELIOS_PORT"


def mesh_file() -> Path:
    return helios_home() / MESH_FILE


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def running_mesh(path: Path | None = None) -> dict[str, Any] | None:
    """The running local mesh's summary (``helios up``'s mesh file), or None when there
    is no file, it does not parse, or its Envoy is gone (a mesh killed with -9)."""
    path = path or mesh_file()
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _alive(info.get("envoy_pid")):
        return None
    return info


def find_front_door(explicit: str | None = None) -> FrontDoor | None:
    """The front door to talk to (the module docstring's order), or None."""
    if explicit:
        return FrontDoor(explicit, "--address")
    from_env = os.environ.get(ADDRESS_ENV, "").strip()
    if from_env:
        return FrontDoor(from_env, f"${ADDRESS_ENV}")
    info = running_mesh()
    if info is not None and info.get("grpc_address"):
        return FrontDoor(str(info["grpc_address"]), str(mesh_file()))
    port = os.environ.get(PORT_ENV, "").strip()
    if port.isdigit():
        return FrontDoor(f"127.0.0.1:{port}", f"${PORT_ENV}")
    return None


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="the mesh's front door (default: $HELIOS_ADDRESS, else the running local mesh"
        f" of $HELIOS_HOME/{MESH_FILE}, else 127.0.0.1:$HELIOS_PORT)",
    )


def write_mesh_file(summary: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``summary`` as the local mesh file (temp file + fsync + rename)."""
    return write_json_atomic(path or mesh_file(), summary, tmp_prefix=f".{MESH_FILE}.")


def remove_mesh_file(state_dir: str, path: Path | None = None) -> None:
    """Remove the mesh file if it is this mesh's (its ``state_dir``): a second mesh
    started on the same HELIOS_HOME may have written its own since."""
    path = path or mesh_file()
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("state_dir") == state_dir:
        path.unlink(missing_ok=True)
