"""What the fuzz suite knows of the mesh it attacks (a module of its own: test modules
import it by name, which a conftest cannot be, there being one per test directory)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FuzzMesh:
    info: dict[str, Any]
    process: subprocess.Popen[bytes]
    output: Path
    state_dir: Path
    home: Path
    # Inputs sent, by surface ("rest", "grpc"), over the whole session.
    sent: Counter[str] = field(default_factory=Counter)
    # Each service's RSS (bytes) once the mesh was up and had served one request.
    baseline_rss: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return str(self.info["rest_url"]).removesuffix("/v1")

    @property
    def grpc_address(self) -> str:
        return str(self.info["grpc_address"])

    @property
    def model(self) -> str:
        return str(self.info["models"][0])

    @property
    def admin_key(self) -> str:
        return Path(self.info["admin_key_file"]).read_text(encoding="utf-8").strip()

    def service_address(self, name: str) -> str:
        return f"127.0.0.1:{self.info['services'][name]['grpc_port']}"

    def pids(self) -> dict[str, int]:
        return {name: int(s["pid"]) for name, s in self.info["services"].items()} | {
            "envoy": int(self.info["envoy_pid"])
        }

    def rss(self) -> dict[str, int]:
        return {name: psutil.Process(pid).memory_info().rss for name, pid in self.pids().items()}

    def error_records(self) -> list[dict[str, Any]]:
        """ERROR (and worse) records in the services' JSON logs so far."""
        records = []
        for log in sorted((self.state_dir / "logs").glob("*.log")):
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line:
                    records.append(json.loads(line))
        return records

    def leaks(self, text: str) -> list[str]:
        """What a client must never see in an error: a service's address, a server path."""
        found = []
        for name, service in self.info["services"].items():
            port = str(service["grpc_port"])
            if f":{port}" in text:
                found.append(f"{name}'s address")
        for path in (self.state_dir, self.home, REPO):
            if str(path) in text:
                found.append(f"server path {path}")
        if "Traceback" in text or "Unexpected <class" in text:
            found.append("exception text")
        return found
