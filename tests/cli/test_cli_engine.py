"""`helios up --engine`: auto runs vLLM wherever it is installed (issue 14) and says why
in the start-up banner; a named engine is taken as named."""

from __future__ import annotations

import importlib.util

import pytest

from cli.main import build_parser
from cli.up_options import choose_engine


def test_auto_is_the_default() -> None:
    assert build_parser().parse_args(["up"]).engine == "auto"


def test_auto_runs_vllm_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def only_without_vllm(name: str, *args: object) -> object:
        return None if name == "vllm" else real(name)

    engine, reason = choose_engine("auto")
    assert (engine == "vllm") == (real("vllm") is not None)
    assert reason.startswith(f"{engine} (auto: ")
    monkeypatch.setattr(importlib.util, "find_spec", only_without_vllm)
    assert choose_engine("auto") == ("transformers", "transformers (auto: vLLM is not installed)")


@pytest.mark.parametrize("named", ["transformers", "vllm"])
def test_a_named_engine_is_taken_as_named(named: str) -> None:
    assert choose_engine(named) == (named, named)
