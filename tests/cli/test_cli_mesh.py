"""How a `helios` command finds the mesh (cli/mesh.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.mesh import find_front_door, mesh_file, remove_mesh_file, running_mesh, write_mesh_file


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HELIOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HELIOS_ADDRESS", raising=False)
    monkeypatch.delenv("HELIOS_PORT", raising=False)
    return tmp_path / "home"


def summary(pid: int, state_dir: str = "/state/a") -> dict[str, object]:
    return {"grpc_address": "127.0.0.1:41234", "envoy_pid": pid, "state_dir": state_dir}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_nothing_found_without_a_mesh() -> None:
    assert find_front_door() is None


def test_the_running_local_mesh_is_found_by_its_file() -> None:
    write_mesh_file(summary(os.getpid()))
    found = find_front_door()
    assert found is not None
    assert (found.address, found.found_by) == ("127.0.0.1:41234", str(mesh_file()))


def test_a_mesh_whose_envoy_is_gone_is_not_running() -> None:
    write_mesh_file(summary(dead_pid()))
    assert running_mesh() is None
    assert find_front_door() is None


def test_flag_then_environment_then_file_then_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_PORT", "9999")
    port = find_front_door()
    assert port is not None and port.address == "127.0.0.1:9999"
    write_mesh_file(summary(os.getpid()))
    local = find_front_door()
    assert local is not None and local.address == "127.0.0.1:41234"
    monkeypatch.setenv("HELIOS_ADDRESS", "mesh.example:80")
    env = find_front_door()
    assert env is not None and env.address == "mesh.example:80"
    flag = find_front_door("elsewhere:1")
    assert flag is not None and (flag.address, flag.found_by) == ("elsewhere:1", "--address")


def test_only_the_mesh_that_wrote_the_file_removes_it() -> None:
    write_mesh_file(summary(os.getpid(), state_dir="/state/b"))
    remove_mesh_file("/state/a")
    assert mesh_file().exists()
    remove_mesh_file("/state/b")
    assert not mesh_file().exists()
