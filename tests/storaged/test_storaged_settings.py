"""storaged's typed settings (storaged/settings.py): tiers from flags or the
environment, checked on construction; the default tier without any."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError
from runtime.settings import from_namespace
from storaged.server import build_parser
from storaged.settings import StoragedSettings, default_tier


def parse(argv: list[str]) -> StoragedSettings:
    return from_namespace(StoragedSettings, build_parser().parse_args(argv))


def test_tiers_from_the_environment_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_STORAGED_TIERS", "ram=/dev/shm/h:1GiB,ssd=/var/h:2GiB")
    settings = parse(["--peer", "p:1", "--peer", "q:2"])
    assert [t.capacity_bytes for t in settings.tiers] == [1 << 30, 2 << 30]
    assert settings.peer == ("p:1", "q:2") and settings.http_base is None
    monkeypatch.delenv("HELIOS_STORAGED_TIERS")
    assert [str(t.path) for t in parse([]).tiers] == [default_tier().split("=")[1].split(":")[0]]


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["--tier", "tape=/x:1GiB"], "tier"), (["--connections", "0"], "connections")],
)
def test_a_bad_flag_is_reported_under_its_own_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(argv)
    assert raised.value.field == field
