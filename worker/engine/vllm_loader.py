"""vLLM loads safetensors weights through Helios' zero-copy mapping (``load_format="helios"``).

vLLM's default loader reads each tensor out of the checkpoint with safetensors'
``get_tensor`` (a copy into a fresh buffer) and then copies it into the model's parameter.
This loader hands the model tensors built on the file's memory mapping itself
(:mod:`zerocopy`: the header validated first, the pages faulted in by several threads),
so the only copy is into vLLM's own parameters (which vLLM shapes itself: fused QKV,
sharding, dtype). The files are those storaged placed (its RAM tier or disk cache), read
where they lie. Everything else is vLLM's default loader: which files, the weight
tracking that fails a load with missing weights, non-safetensors checkpoints.

Registered in every vLLM process through vLLM's plugin entry point
(worker/engine/vllm_plugin.py calls :func:`register`), so it works whichever
way vLLM starts its processes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from zerocopy import map_file

LOAD_FORMAT = "helios"

_registered = False


class ZeroCopyModelLoader(DefaultModelLoader):
    """vLLM's default loader, with safetensors tensors on the mapped files."""

    def __init__(self, load_config: LoadConfig) -> None:
        # The default loader's choices (which files, pickled checkpoints) are those of
        # load_format "auto"; only how safetensors are read differs.
        own = copy.copy(load_config)
        own.load_format = "auto"
        super().__init__(own)

    def _get_weights_iterator(
        self, source: DefaultModelLoader.Source
    ) -> Generator[tuple[str, torch.Tensor], None, None]:
        _, files, use_safetensors, _ = self._prepare_weights(
            source.model_or_path,
            source.subfolder,
            source.revision,
            source.fall_back_to_pt,
            source.allow_patterns_overrides,
        )
        if not use_safetensors:  # pickled checkpoints: vLLM's own way
            yield from super()._get_weights_iterator(source)
            return
        if self.counter_before_loading_weights == 0.0:  # vLLM logs the load's time
            self.counter_before_loading_weights = time.perf_counter()
        yield from mapped_weights(files, source.prefix, source.is_unused_weight)


def mapped_weights(
    files: list[str], prefix: str = "", is_unused: Any = None
) -> Generator[tuple[str, torch.Tensor], None, None]:
    """(name, tensor) for every tensor of ``files``, each tensor on its file's mapping."""
    for path in files:
        mapped = map_file(Path(path))
        mapped.populate()
        for name, tensor in mapped.tensors().items():
            if is_unused is None or not is_unused(name):
                yield prefix + name, tensor


def register() -> None:
    """vLLM's plugin hook: make ``load_format="helios"`` known in this process."""
    global _registered
    if not _registered:
        register_model_loader(LOAD_FORMAT)(ZeroCopyModelLoader)
        _registered = True
