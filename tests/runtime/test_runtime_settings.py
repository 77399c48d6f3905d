"""The settings binder (runtime/settings.py): a dataclass's fields become flags with
environment defaults, and what is parsed becomes a validated, frozen settings object."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.settings import Settings, add_arguments, from_namespace, setting


def _no_dots(text: str) -> None:
    if "." in text:
        raise ValueError(f"{text!r} has a dot")


@dataclasses.dataclass(frozen=True)
class Demo(Settings):
    name: str = setting("x", help="a name")
    count: int = setting(3, ge=1, metavar="N")
    ratio: float | None = setting(None, gt=0, le=1)
    mode: str = setting("a", choices=("a", "b"))
    root: Path | None = setting(None)
    item: tuple[str, ...] = setting((), env="items", separator=";", check=_no_dots)
    fast: bool = setting(False, group="speed")
    cache: bool = setting(True, negatable=True, group="speed")
    secret: str = setting("", from_env=False)

    def check(self) -> None:
        if self.mode == "b" and not self.item:
            raise ConfigError("item", "mode b needs at least one")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in ("NAME", "COUNT", "RATIO", "MODE", "ROOT", "ITEMS", "FAST", "CACHE", "SECRET"):
        monkeypatch.delenv(f"HELIOS_{field}", raising=False)
        monkeypatch.delenv(f"HELIOS_DEMO_{field}", raising=False)


def parse(argv: list[str]) -> Demo:
    parser = add_arguments(argparse.ArgumentParser(), Demo, "demo")
    return from_namespace(Demo, parser.parse_args(argv))


def test_defaults_and_flags() -> None:
    assert parse([]) == Demo()
    got = parse(
        [
            *("--name=n", "--count=5", "--ratio=0.5", "--mode=b", "--root=/r"),
            *("--item=p", "--item=q", "--fast", "--no-cache"),
        ]
    )
    assert got == Demo("n", 5, 0.5, "b", Path("/r"), ("p", "q"), True, False)


def test_precedence_flag_then_service_variable_then_shared_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HELIOS_COUNT", "7")
    assert parse([]).count == 7
    monkeypatch.setenv("HELIOS_DEMO_COUNT", "8")
    assert parse([]).count == 8
    assert parse(["--count", "9"]).count == 9
    monkeypatch.setenv("HELIOS_DEMO_COUNT", "")  # empty counts as unset
    assert parse([]).count == 7


def test_variables_are_converted_like_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_DEMO_RATIO", "0.25")
    monkeypatch.setenv("HELIOS_DEMO_ROOT", "/data")
    monkeypatch.setenv("HELIOS_ITEMS", "a;;b")  # its own name and separator; empty skipped
    monkeypatch.setenv("HELIOS_FAST", "yes")
    monkeypatch.setenv("HELIOS_CACHE", "off")
    monkeypatch.setenv("HELIOS_SECRET", "not read")
    got = parse(["--item", "c"])
    assert (got.ratio, got.root, got.item) == (0.25, Path("/data"), ("a", "b", "c"))
    assert (got.fast, got.cache, got.secret) == (True, False, "")
    monkeypatch.setenv("HELIOS_DEMO_COUNT", "many")
    with pytest.raises(SystemExit):  # argparse: "argument --count: expected an integer"
        parse([])


def test_a_bad_boolean_variable_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_DEMO_CACHE", "maybe")
    with pytest.raises(ConfigError) as raised:
        parse([])
    assert raised.value.field == "cache"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--count", "0"], "count"),
        (["--ratio", "0"], "ratio"),
        (["--ratio", "1.5"], "ratio"),
        (["--ratio", "nan"], "ratio"),
        (["--item", "a.b"], "item"),
        (["--mode", "b"], "item"),  # the cross-field rule
    ],
)
def test_a_bad_value_is_reported_under_its_own_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(argv)
    assert raised.value.field == field


def test_choices_hold_for_variables_and_for_settings_built_by_hand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # argparse checks choices on the command line only; the settings check the rest.
    monkeypatch.setenv("HELIOS_MODE", "c")
    with pytest.raises(ConfigError, match="must be one of a, b, got 'c'"):
        parse([])
    with pytest.raises(ConfigError) as raised:
        Demo(count=0)
    assert raised.value.field == "count"


def test_settings_are_frozen_and_a_foreign_namespace_is_refused() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Demo().count = 4  # type: ignore[misc]
    with pytest.raises(ConfigError, match="add_arguments"):
        from_namespace(Demo, argparse.Namespace(name="x"))


def test_help_text_and_groups() -> None:
    parser = add_arguments(argparse.ArgumentParser(prog="demo"), Demo, "demo")
    text = parser.format_help()
    assert " ".join(text.split()).count("--name NAME a name") == 1
    assert "--count N" in text and "{a,b}" in text
    assert "speed:" in text and "--cache, --no-cache" in text
