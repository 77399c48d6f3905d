"""What the e2e and fuzz tests know of a running mesh (`helios up`, started as a process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 240.0


@dataclass
class Mesh:
    """Addresses of a running mesh (from `helios up --ready-file`)."""

    info: dict[str, Any]
    process: subprocess.Popen[bytes]
    output: Path
    model_dir: Path

    @property
    def rest_url(self) -> str:
        return str(self.info["rest_url"])

    @property
    def grpc_address(self) -> str:
        return str(self.info["grpc_address"])

    def service_address(self, name: str) -> str:
        return f"127.0.0.1:{self.info['services'][name]['grpc_port']}"

    @property
    def admin_key(self) -> str:
        """The admin key `helios up` made (in the test's HELIOS_HOME)."""
        return Path(self.info["admin_key_file"]).read_text(encoding="utf-8").strip()

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def model(self) -> str:
        return str(self.info["models"][0])


@contextmanager
def helios_up(
    root: Path, model_name: str, model_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[Mesh]:
    """`helios up` as a process (HELIOS_HOME under ``root``), serving ``model_dir`` as
    ``model_name`` with ``args`` added; stopped with Ctrl-C (SIGINT), which must end it
    cleanly (exit 0)."""
    ready = root / "up.json"
    output = root / "up.out"
    environ = {
        **os.environ,
        "HELIOS_HOME": str(root / "home"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [sys.executable, "-m", "cli.main", "up", "--port", "0", "--ready-file", str(ready)]
    command += ["--state-dir", str(root / "state"), "--model", f"{model_name}={model_dir}"]
    # No embedding model unless a test asks for it (`--embedding-model` in ``args`` wins).
    command.append("--no-embedding-model")
    # The reference engine (starts in seconds) unless a test asks for another (``args``
    # come later and win); `helios up`'s own default is auto (vLLM where installed).
    command += ["--engine", "transformers"]
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*command, *args], cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                f"helios up did not come up:\n{output.read_text(errors='replace')}"
            )
        time.sleep(0.1)
    mesh = Mesh(json.loads(ready.read_text()), process, output, model_dir)
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
