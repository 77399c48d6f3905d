"""Helpers shared by the registry tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

CHUNK = 1024  # small chunks so that every test file spans several


def write_model(directory: Path, weights: bytes | None = None, extra: bytes = b"x") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (directory / "model.safetensors").write_bytes(
        weights if weights is not None else os.urandom(5000)
    )
    (directory / "tokenizer.json").write_bytes(b'{"version": "1.0"}' + extra)
    (directory / "sub").mkdir(exist_ok=True)
    (directory / "sub" / "notes.txt").write_bytes(b"notes")
    return directory
