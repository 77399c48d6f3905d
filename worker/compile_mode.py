"""How a worker's vLLM engines compile, and where vLLM keeps what it compiled (issue 14).

vLLM's torch.compile warm-up is most of its start on a CPU (48-61 s of a 108-123 s start
on the 2-core development machine), and it compiles again on every start unless its
compile cache survives: the cache goes under $HELIOS_HOME (not ~/.cache or a temporary
directory), keyed by vLLM itself on the model, the engine settings and vLLM's code, so the
same model version on the same settings reuses it across restarts, reloads and workers.

``--compile auto`` picks per device: compiled on a GPU (CUDA graphs and fused kernels pay
for their compile time many times over), eager on a CPU, where compiling costs about a
minute per start for the throughput measured in bench/ (see README, "Engines").
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from runtime.config import ConfigError
from worker.engine.vllm_engine import COMPILE_MODES

COMPILE_CHOICES = ("auto", *COMPILE_MODES)
CACHE_ROOT_VARIABLE = "VLLM_CACHE_ROOT"


def resolve_compile_mode(choice: str, *, has_gpu: bool) -> str:
    """The compile mode ``choice`` means on this device ("auto": full on a GPU, eager on
    a CPU)."""
    if choice == "auto":
        return "full" if has_gpu else "eager"
    if choice not in COMPILE_MODES:
        raise ConfigError("compile", f"must be one of {', '.join(COMPILE_CHOICES)}")
    return choice


def persistent_vllm_cache(home: Path, environ: MutableMapping[str, str] = os.environ) -> Path:
    """Point vLLM's cache (compiled graphs, among others) under ``home`` unless the
    operator chose a place (VLLM_CACHE_ROOT); returns the directory in use."""
    environ.setdefault(CACHE_ROOT_VARIABLE, str(home / "cache" / "vllm"))
    return Path(environ[CACHE_ROOT_VARIABLE])
