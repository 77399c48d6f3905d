"""The estimator's typed settings (estimator/settings.py): each bad flag or variable is
reported under its own field."""

from __future__ import annotations

from pathlib import Path

import pytest

from estimator.server import build_parser
from estimator.settings import EstimatorSettings
from runtime.config import ConfigError
from runtime.settings import from_namespace


def parse(argv: list[str]) -> EstimatorSettings:
    return from_namespace(EstimatorSettings, build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--cache-ttl-seconds", "0"], "cache_ttl_seconds"),
        (["--cache-ttl-seconds", "nan"], "cache_ttl_seconds"),
        (["--cache-max-entries", "0"], "cache_max_entries"),
        (["--resolve-ttl-seconds", "-1"], "resolve_ttl_seconds"),
        (["--model-root", "/nonexistent/helios-models"], "model_root"),
    ],
)
def test_a_bad_flag_is_reported_under_its_own_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(argv)
    assert raised.value.field == field


def test_roots_from_the_environment_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("HELIOS_ESTIMATOR_MODEL_ROOTS", f"{tmp_path / 'a'},")
    settings = parse(["--model-root", str(tmp_path / "b")])
    assert settings.model_root == (tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("HELIOS_CACHE_TTL_SECONDS", "0")
    with pytest.raises(ConfigError) as raised:
        parse([])
    assert raised.value.field == "cache_ttl_seconds"
