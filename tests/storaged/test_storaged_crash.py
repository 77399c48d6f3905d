"""storaged SIGKILLed mid-download, then restarted: no corrupt file served, download resumes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from helios.v1 import storage_pb2 as pb
from helios.v1 import storage_pb2_grpc
from storaged_fakes import BlobStore, RangeServer, sha, start_registry

ROOT = Path(__file__).resolve().parents[2]


async def _start(tmp: Path, registry: str, http_base: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / "storaged.ready.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(  # noqa: ASYNC220 (start-up only)
        [
            sys.executable,
            "-m",
            "storaged.server",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--ready-file",
            str(ready),
            "--tier",
            f"ram={tmp / 'ram'}:64MiB",
            "--registry",
            registry,
            "--http-base",
            http_base,
            "--connections",
            "4",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "storaged exited"
        assert time.monotonic() < deadline, "storaged not ready"
        await asyncio.sleep(0.1)
    port = json.loads(ready.read_text())["grpc_port"]
    return proc, f"127.0.0.1:{port}"


async def test_sigkill_mid_download_then_resume(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "remote", chunk_size=256 * 1024)
    data = os.urandom(8 << 20)
    store.add_version("org/m", "v1", {"model.safetensors": data})
    registry, _ = await start_registry(store)
    http = RangeServer(store.root, rate_bytes_per_s=1 << 20)  # 4 connections: ~4 MB/s
    node = tmp_path / "node"
    node.mkdir()
    blob = node / "ram" / "blobs" / sha(data)
    proc, target = await _start(node, f"127.0.0.1:{registry.port}", http.base_url)
    try:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            async for msg in stub.EnsureModel(pb.EnsureModelRequest(model_id="org/m")):
                if msg.bytes_done >= len(data) // 3:
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        sent_before = http.bytes_sent
        assert 0 < sent_before < len(data)
        # Nothing half-written is visible: no blob, no version directory.
        assert not blob.exists()
        assert not (node / "ram" / "versions" / "org%2Fm" / "v1").exists()
        assert (node / "ram" / "tmp" / f"{sha(data)}.journal").exists()

        http.rate = 0
        proc, target = await _start(node, f"127.0.0.1:{registry.port}", http.base_url)
        async with grpc.aio.insecure_channel(target) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            msgs = [m async for m in stub.EnsureModel(pb.EnsureModelRequest(model_id="org/m"))]
        local = Path(msgs[-1].local_dir) / "model.safetensors"
        assert hashlib.sha256(local.read_bytes()).hexdigest() == sha(data)
        # Resumed: the journaled chunks were not fetched again.
        assert http.bytes_sent - sent_before < len(data) - len(data) // 4
    finally:
        proc.kill()
        proc.wait()
        http.close()
        await registry.stop(0)
