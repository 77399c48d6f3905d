"""run(): a real service process, stopped by SIGTERM while a stream is in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import grpc
import grpc.aio
import pytest
from runtime_echo import SERVICE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SCRIPT = textwrap.dedent(
    """
    import argparse
    import sys
    from pathlib import Path

    from runtime.config import add_server_arguments, settings_from_args
    from runtime.server import run
    from runtime_echo import register_echo

    parser = argparse.ArgumentParser()
    add_server_arguments(parser, "echo")
    parser.add_argument("--cleanup-marker", type=Path, required=True)
    args = parser.parse_args()

    async def build():
        async def cleanup():
            args.cleanup_marker.write_text("cleaned")
        return register_echo, cleanup

    run(settings_from_args(args, "echo"), build)
    """
)


async def _start(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, Path, Path]:
    script = tmp_path / "echo_service.py"
    script.write_text(SCRIPT)
    ready, log = tmp_path / "echo.ready.json", tmp_path / "echo.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
        "HELIOS_ECHO_LOG_LEVEL": "INFO",
    }
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--ready-file",
            str(ready),
            "--cleanup-marker",
            str(tmp_path / "cleaned"),
            *extra,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    return proc, ready, log


def _log_lines(log: Path) -> list[dict[str, object]]:
    # Python logging is all JSON; grpc's C core may add its own plain lines (e.g. a bind
    # failure), which are not ours to format.
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def _wait_ready(
    proc: asyncio.subprocess.Process, ready: Path, log: Path
) -> dict[str, object]:
    """What a launcher does: poll for the ready file, failing fast if the process died."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not _exists(ready):
        assert proc.returncode is None, _read(log)
        assert loop.time() < deadline, "no ready file: " + _read(log)
        await asyncio.sleep(0.05)
    info: dict[str, object] = json.loads(_read(ready))
    return info


def _read(path: Path) -> str:
    return path.read_text()


def _exists(path: Path) -> bool:
    return path.exists()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_sigterm_drains_in_flight_stream_and_exits_0(tmp_path: Path, event_loop: str) -> None:
    proc, ready, log = await _start(tmp_path, "--drain-seconds", "5", "--event-loop", event_loop)
    try:
        info = await _wait_ready(proc, ready, log)
        assert info["pid"] == proc.pid and info["service"] == "echo"

        async with grpc.aio.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as channel:
            call = channel.unary_stream(f"/{SERVICE}/Stream")(b"8:0.2", timeout=10)
            assert await call.read() == b"0"
            proc.send_signal(signal.SIGTERM)
            rest = []
            while (msg := await call.read()) is not grpc.aio.EOF:
                rest.append(msg)
            assert rest == [str(i).encode() for i in range(1, 8)]
            assert await call.code() == grpc.StatusCode.OK

        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    lines = _log_lines(log)  # every line is JSON
    msgs = [line["msg"] for line in lines]
    serving = next(line for line in lines if line["msg"] == "serving")
    assert serving["grpc_port"] == info["grpc_port"] and serving["service"] == "echo"
    assert serving["event_loop"] == event_loop
    assert any(str(m).startswith("received SIGTERM") for m in msgs)
    assert msgs.index("draining") < msgs.index("stopped")
    assert (tmp_path / "cleaned").read_text() == "cleaned"  # cleanup ran
    assert not ready.exists()  # removed once no longer serving


async def test_second_signal_stops_without_waiting(tmp_path: Path) -> None:
    proc, ready, log = await _start(tmp_path, "--drain-seconds", "30")
    try:
        info = await _wait_ready(proc, ready, log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as channel:
            call = channel.unary_stream(f"/{SERVICE}/Stream")(b"1000:0.1", timeout=20)
            assert await call.read() == b"0"
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            # The stream is cut (a client sees the status once it reads past what was
            # already sent), and the process exits well before the 30 s drain.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while await asyncio.wait_for(call.read(), 5) is not grpc.aio.EOF:
                    pass
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    msgs = [str(line["msg"]) for line in _log_lines(log)]
    assert any(m.startswith("received SIGINT again") for m in msgs)
    assert (tmp_path / "cleaned").read_text() == "cleaned"


async def test_startup_failure_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, ready, log = await _start(tmp_path, "--port", str(port), "--metrics-port", "-1")
        try:
            assert await asyncio.wait_for(proc.wait(), 10) == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    lines = _log_lines(log)
    fatal = [line for line in lines if line["level"] == "CRITICAL"]
    assert fatal and str(port) in str(fatal[0]["exc_info"])
    assert not ready.exists()
    assert (tmp_path / "cleaned").read_text() == "cleaned"
