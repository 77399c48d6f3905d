"""The CPU engine loads safetensors weights zero-copy (through zerocopy's mapping)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.tinymodel import build_tiny_model
from worker.engine.transformers_engine import TransformersEngine


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


async def test_engine_weights_live_on_the_mapped_checkpoint(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "tiny")
    engine = await TransformersEngine.load(model_dir, "tiny")
    try:
        ranges = _mapped_ranges((model_dir / "model.safetensors").resolve())
        assert ranges, "model.safetensors is not mapped"
        params = list(engine._model.parameters())
        assert params
        for param in params:
            pointer = param.data_ptr()
            assert any(start <= pointer < end for start, end in ranges), "a weight was copied"
        assert all(p.dtype == torch.float32 for p in params)
    finally:
        await engine.shutdown()
