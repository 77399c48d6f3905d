"""What the e2e tests know of a running mesh."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
