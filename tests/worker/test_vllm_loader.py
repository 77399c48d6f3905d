"""vLLM's zero-copy weight loader (worker/engine/vllm_loader.py, load_format "helios"):
the tensors it hands vLLM lie on the files' mappings and equal what safetensors reads;
vLLM finds it through the plugin entry point. Engines loading with it (the worker's
default): test_worker_vllm.py, whose greedy tokens equal the reference engine's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.tinymodel import build_tiny_model
from worker.engine.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(vllm_available() is not None, reason="vLLM is not importable")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("loader") / "model")


def test_mapped_weights_are_the_checkpoint_on_its_mapping(model_dir: Path) -> None:
    from worker.engine.vllm_loader import mapped_weights

    files = sorted(str(p) for p in model_dir.glob("*.safetensors"))
    weights = dict(mapped_weights(files, prefix="model."))
    with safe_open(files[0], framework="pt") as reference:
        names = set(reference.keys())
        assert {name.removeprefix("model.") for name in weights} == names
        for name in names:
            assert torch.equal(weights["model." + name], reference.get_tensor(name))
    # Not copies: every tensor's bytes lie in a mapping of the checkpoint file.
    regions = _mapped_regions(Path(files[0]).resolve())
    assert regions
    for name, tensor in weights.items():
        start = tensor.data_ptr()
        assert any(lo <= start and start + tensor.nbytes <= hi for lo, hi in regions), name


def _mapped_regions(path: Path) -> list[tuple[int, int]]:
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            lo, hi = fields[0].split("-")
            regions.append((int(lo, 16), int(hi, 16)))
    return regions


def test_unused_weights_are_skipped(model_dir: Path) -> None:
    from worker.engine.vllm_loader import mapped_weights

    files = [str(p) for p in model_dir.glob("*.safetensors")]
    names = [name for name, _ in mapped_weights(files, is_unused=lambda n: "layers.1." in n)]
    assert names and not [n for n in names if "layers.1." in n]


def test_vllm_finds_the_loader_through_its_plugin_entry_point() -> None:
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.plugins import load_general_plugins

    from worker.engine.vllm_loader import LOAD_FORMAT, ZeroCopyModelLoader

    load_general_plugins()  # what every vLLM process does as it starts
    loader = get_model_loader(LoadConfig(load_format=LOAD_FORMAT))
    assert isinstance(loader, ZeroCopyModelLoader)
    assert loader.load_config.load_format == "auto"  # vLLM's choice of files stands
