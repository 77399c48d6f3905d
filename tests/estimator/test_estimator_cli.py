"""``helios estimate``: the table, JSON output and errors."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from cli.estimate import add_estimate_command, format_bytes

CONFIGS = Path(__file__).parent / "configs"


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="helios")
    add_estimate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["estimate", *argv])
    out = io.StringIO()
    return args.handler(args, out), out.getvalue()


def test_table_from_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((CONFIGS / "llama-3-8b.json").read_text())
    code, text = run([str(tmp_path), "--dtype", "bf16", "--max-seq-len", "4096", "--gpu", "L4"])
    assert code == 0
    assert "8,030,261,248 parameters" in text
    for label in ("weights", "KV cache", "activations", "overhead", "total"):
        assert label in text
    assert "14.96 GiB" in text  # 16,060,522,496 bytes of bf16 weights
    assert "L4: fits" in text


def test_json_and_parallel_layout() -> None:
    code, text = run([str(CONFIGS / "mixtral-8x7b.json"), "--tp", "4", "--json"])
    assert code == 0
    data = json.loads(text)
    assert data["parameter_count"] == 46_702_792_704
    assert data["gpu_count"] == 4
    assert data["per_gpu"]["weights_bytes"] < data["weights_bytes"] / 3


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run([str(CONFIGS / "gpt2.json"), "--dtype", "fp7"])
    assert code == 2
    assert "dtype: unknown precision" in capsys.readouterr().err
    code, _ = run(["/nonexistent/model"])
    assert code == 2


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
