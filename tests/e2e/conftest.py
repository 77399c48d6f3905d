"""The whole local mesh, started the way a user starts it: `helios up`, as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_harness import Mesh

from cli.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 240.0


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    ready = root / "up.json"
    output = root / "up.out"
    env = {**os.environ, "HELIOS_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    # The fast tiny model, not `helios up`'s default (SmolLM2, slower to build and run).
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "up",
                "--port",
                "0",
                "--ready-file",
                str(ready),
                "--state-dir",
                str(root / "state"),
                "--model",
                f"{DEFAULT_MODEL_NAME}={model_dir}",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"helios up did not come up:\n{output.read_text(errors='replace')}")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    mesh = Mesh(info, process, output, model_dir)
    try:
        yield mesh
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert code == 0, output.read_text(errors="replace")
