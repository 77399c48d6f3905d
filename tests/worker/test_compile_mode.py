"""The worker's --compile setting and vLLM's persistent compile cache (issue 14), without
starting vLLM: what auto means per device, and what vLLM is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.errors import InvalidArgumentError
from runtime.settings import from_namespace
from worker.compile_mode import persistent_vllm_cache, resolve_compile_mode
from worker.engine.vllm_engine import VllmConfig, engine_kwargs
from worker.server import build_parser
from worker.settings import WorkerSettings, vllm_config


def test_auto_compiles_on_a_gpu_and_runs_eager_on_a_cpu() -> None:
    assert resolve_compile_mode("auto", has_gpu=True) == "full"
    assert resolve_compile_mode("auto", has_gpu=False) == "eager"
    for mode in ("eager", "full"):
        assert resolve_compile_mode(mode, has_gpu=False) == mode
        assert resolve_compile_mode(mode, has_gpu=True) == mode
    with pytest.raises(ConfigError, match="compile"):
        resolve_compile_mode("sometimes", has_gpu=False)


def test_eager_and_full_reach_vllm_as_enforce_eager(tmp_path: Path) -> None:
    assert engine_kwargs(tmp_path, VllmConfig(compile="eager"), None)["enforce_eager"] is True
    assert engine_kwargs(tmp_path, VllmConfig(compile="full"), None)["enforce_eager"] is False
    with pytest.raises(InvalidArgumentError, match="compile"):
        VllmConfig(compile="auto")  # resolved by the worker before it reaches the engine


def test_the_flag_defaults_to_auto_and_this_machine_resolves_it() -> None:
    settings = from_namespace(WorkerSettings, build_parser().parse_args(["--engine", "vllm"]))
    assert settings.compile == "auto"
    assert vllm_config(settings).compile in ("eager", "full")
    assert vllm_config(WorkerSettings(engine="vllm", compile="full")).compile == "full"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compile", "fast"])


def test_the_compile_cache_lives_under_helios_home_unless_the_operator_chose(
    tmp_path: Path,
) -> None:
    environ: dict[str, str] = {}
    assert persistent_vllm_cache(tmp_path, environ) == tmp_path / "cache" / "vllm"
    assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "vllm")
    chosen = {"VLLM_CACHE_ROOT": "/srv/vllm-cache"}
    assert persistent_vllm_cache(tmp_path, chosen) == Path("/srv/vllm-cache")
