"""Child service processes of the local mesh: start, wait until serving, stop, and
restart a process that died (:class:`Backoff`, :func:`supervise`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A service exited or did not become ready in time."""


@dataclass
class ServiceProcess:
    """One Helios service running as its own process (``python -m <module>``)."""

    name: str
    module: str
    args: list[str]
    state_dir: Path
    essential: bool = True
    process: asyncio.subprocess.Process | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    # The ports it serves on: 0 (a free one) at the first start; a restart asks for the
    # ones it had, so that every peer's address for it stays valid.
    port: int = 0
    metrics_port: int = 0

    @property
    def ready_file(self) -> Path:
        return self.state_dir / f"{self.name}.ready.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"{self.ready['host']}:{self.ready['grpc_port']}"

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        # Children share the launcher's environment; the log file keeps their output
        # out of the terminal, where only the launcher speaks.
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--ready-file",
                str(self.ready_file),
                *self.args,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                # Ctrl-C reaches the launcher only (it stops us): a process group of our
                # own is out of the terminal's foreground group. Not a new session: Linux
                # gives each session its own scheduling autogroup, and a service in its own
                # group beside vLLM's spinning engine-core process held its tokens back in
                # ~100 ms bursts (TTFT p50 5.6 ms -> 108 ms at one stream, measured).
                process_group=0,
            )

    async def wait_ready(self, limit_s: float) -> dict[str, Any]:
        """Wait for the ready file the runtime writes once the server serves."""
        assert self.process is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready_file.exists():
                self.ready = json.loads(self.ready_file.read_text())
                self.port = int(self.ready["grpc_port"])
                self.metrics_port = int(self.ready.get("metrics_port") or 0)
                return self.ready
            await asyncio.sleep(0.05)
        raise ServiceStartError(
            f"{self.name} was not ready after {limit_s:.0f}s:\n{self.log_tail()}"
        )

    async def wait_exit(self) -> int:
        """Its exit status once it has ended (-N: killed by signal N; asyncio's child
        watcher: no polling)."""
        assert self.process is not None
        return await self.process.wait()

    async def restart(self, limit_s: float) -> None:
        """Start it again on the same ports and wait until it serves (one that does not
        get ready in time is killed, so that its supervisor sees it ended)."""
        await self.start()
        try:
            await self.wait_ready(limit_s)
        except ServiceStartError:
            await self.stop(0)
            raise

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    async def stop(self, grace: float) -> int | None:
        """SIGTERM (the service drains), then SIGKILL after ``grace`` seconds."""
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=grace)
        except TimeoutError:
            logger.warning("service did not stop in time; killing it", extra={"service": self.name})
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return await self.process.wait()


# --- Supervision (issue 16): a service that dies while the mesh runs is started again.

RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A process that has served this long since its last restart starts over at the first delay.
RESTART_BACKOFF_RESET_S = 60.0


class Supervised(Protocol):
    """A child process the supervisor watches and restarts."""

    @property
    def name(self) -> str: ...

    async def wait_exit(self) -> int:
        """Its exit status once it has ended (at once when it has already)."""
        ...

    async def restart(self, limit_s: float) -> None:
        """Start it again (same ports) and return once it serves; raise if it does not."""
        ...


@dataclass
class Backoff:
    """Exponential restart delays: ``initial_s`` doubling up to ``max_s``; back to the
    first delay once a process has run ``reset_after_s`` since it was last (re)started."""

    initial_s: float = RESTART_BACKOFF_INITIAL_S
    max_s: float = RESTART_BACKOFF_MAX_S
    reset_after_s: float = RESTART_BACKOFF_RESET_S
    attempt: int = 0  # restarts since the last reset

    def next_delay(self, ran_for_s: float) -> float:
        """The delay before the next restart of a process that ran ``ran_for_s`` seconds."""
        if ran_for_s >= self.reset_after_s:
            self.attempt = 0
        delay = min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return delay


@dataclass(frozen=True)
class Restart:
    """One restart, as reported: which service, how it had ended, the attempt number."""

    service: str
    exit_code: int | None
    attempt: int
    delay_s: float

    def describe(self) -> str:
        return f"restarted {self.service} (exit {self.exit_code}), attempt {self.attempt}"


async def supervise(
    child: Supervised,
    *,
    ready_limit_s: float,
    on_restart: Callable[[Restart], Awaitable[None]],
    backoff: Backoff | None = None,
) -> None:
    """Watch ``child`` until cancelled; each time it ends (any exit), wait the backoff's
    delay, start it again, and once it serves call ``on_restart``. A restart that fails
    (exits again or never gets ready) counts as one more attempt. Waiting costs nothing
    while the child runs (its end is awaited, not polled: a mesh of six children polled
    ten times a second cost the launcher 5 ms of CPU a second)."""
    backoff = backoff or Backoff()
    started = time.monotonic()
    while True:
        code = await child.wait_exit()
        delay = backoff.next_delay(time.monotonic() - started)
        logger.warning(
            "service exited; restarting",
            extra={"service": child.name, "exit_code": code, "delay_s": delay},
        )
        await asyncio.sleep(delay)
        started = time.monotonic()
        try:
            await child.restart(ready_limit_s)
        except (ServiceStartError, OSError, RuntimeError) as exc:
            logger.error(
                "service restart failed",
                extra={"service": child.name, "attempt": backoff.attempt, "error": str(exc)},
            )
            continue
        await on_restart(Restart(child.name, code, backoff.attempt, delay))


async def popen_exit(process: subprocess.Popen[bytes]) -> int:
    """The exit status of a process started with :class:`subprocess.Popen`, awaited on
    its pidfd (readable once it ends); where there is none (not Linux), a thread waits."""
    code = process.poll()
    if code is not None:
        return code
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return await asyncio.to_thread(process.wait)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()  # reaps it: it has ended
