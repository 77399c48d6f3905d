"""The worker's typed settings (worker/settings.py): each bad flag or variable is
reported under its own field, and what the builders derive from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.settings import from_namespace
from worker.server import build_parser
from worker.settings import WorkerSettings, vllm_config


def parse(argv: list[str]) -> WorkerSettings:
    return from_namespace(WorkerSettings, build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--memory-capacity-bytes", "0"], "memory_capacity_bytes"),
        (["--max-concurrency", "0"], "max_concurrency"),
        (["--max-num-seqs", "0"], "max_num_seqs"),
        (["--max-model-len", "-1"], "max_model_len"),
        (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization"),
        (["--gpu-memory-utilization", "0"], "gpu_memory_utilization"),
        (["--cpu-kvcache-space-gib", "0"], "cpu_kvcache_space_gib"),
        (["--tensor-parallel-size", "0"], "tensor_parallel_size"),
        (["--max-loras", "-1"], "max_loras"),
        # Its own field (it was reported as max_loras).
        (["--max-lora-rank", "0"], "max_lora_rank"),
        (["--model", "no-path"], "model"),
        (["--model-root", "/nonexistent/helios-root"], "model_root"),
        (["--engine", "vllm", "--role", "decode"], "kv_shared_path"),
        # A socket for an endpoint turned off: refused, not silently not served.
        (["--rest-port", "-1", "--rest-socket", "/tmp/w.sock"], "rest_socket"),
    ],
)
def test_a_bad_flag_is_reported_under_its_own_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(argv)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("HELIOS_WORKER_ROLE", "sometimes", "role"),  # argparse skips choices for defaults
        ("HELIOS_ENGINE", "onnx", "engine"),
        ("HELIOS_WORKER_ENABLE_PREFIX_CACHING", "perhaps", "enable_prefix_caching"),
    ],
)
def test_a_bad_variable_is_reported_under_its_flag(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        parse([])
    assert raised.value.field == field


def test_what_the_builders_take(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELIOS_WORKER_ENABLE_PREFIX_CACHING", "false")
    monkeypatch.setenv("HELIOS_MAX_NUM_SEQS", "12")
    models = tmp_path / "models"
    models.mkdir()
    settings = parse(
        [
            *("--engine", "vllm", "--role", "prefill", "--kv-shared-path", str(tmp_path)),
            *("--model", f"m={models / 'm'}", "--model-root", str(models)),
            *("--max-loras", "2", "--quantization", "awq"),
        ]
    )
    assert settings.models == [("m", models / "m")]
    assert settings.local_roots.contains(models.resolve() / "x")
    config = vllm_config(settings)
    assert (config.max_num_seqs, config.enable_prefix_caching) == (12, False)
    assert (config.kv_role, config.kv_shared_path) == ("prefill", tmp_path)
    assert (config.lora.max_loras, config.quantization) == (2, "awq")
    assert vllm_config(WorkerSettings()).kv_role is None
