"""`helios pull` (embedded registry, and through a running registry over gRPC)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import pytest
from fake_hub import FakeHub
from helios.v1 import registry_pb2_grpc

from cli.pull import add_pull_command, pull_command
from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.server import start_server


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pull_command(parser.add_subparsers())
    return parser.parse_args(["pull", *argv])


def test_registry_cli_pull_directory(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = parse(str(model_dir), "--as", "Org/Tiny", "--data-dir", str(data), "--no-progress")
    assert pull_command(args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("org/tiny@")
    registry = Registry.open(data)
    assert registry.meta.versions()[0].version == printed.split("@")[1]
    registry.close()
    bad = parse(str(model_dir), "--as", "../evil", "--data-dir", str(data), "--no-progress")
    assert pull_command(bad) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_registry_cli_pull_hub(
    tmp_path: Path, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = fake_hub.repo("org/tiny").commit({"config.json": b"{}", "w.bin": b"x" * 3000})
    args = parse(
        "org/tiny@main", "--data-dir", str(tmp_path / "d"), "--hf-endpoint", fake_hub.endpoint
    )
    assert pull_command(args) == 0
    assert capsys.readouterr().out.strip() == f"org/tiny@{commit}"


async def test_registry_cli_pull_through_running_registry(tmp_path: Path, model_dir: Path) -> None:
    registry = Registry.open(tmp_path / "served")

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    try:
        # The served registry has no import roots: the CLI uploads the files (UploadModel).
        args = parse(str(model_dir), "--as", "org/tiny", "--registry", running.address)
        assert await asyncio.to_thread(pull_command, args) == 0
        row = await registry.resolve("org/tiny")
        assert row.model_id == "org/tiny" and row.source == "upload"
        manifest = await registry.manifest("org/tiny", row.version)
        assert sorted(f.path for f in manifest.files) == [
            "config.json",
            "model.safetensors",
            "sub/notes.txt",
            "tokenizer.json",
        ]
        for f in manifest.files:
            stored = b"".join([piece async for _, _, piece in registry.read_blob(f.sha256)])
            assert stored == (model_dir / f.path).read_bytes()
    finally:
        await running.stop(0)
        registry.close()
