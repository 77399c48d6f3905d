"""Tier configuration: ``--tier ram=/dev/shm/helios:2GiB`` and friends."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tier", "TierConfig", "format_bytes", "parse_size", "parse_tier_spec"]


class Tier(enum.IntEnum):
    """Local tiers, fastest first (the value orders them); REMOTE is not local."""

    RAM = 1
    NVME = 2
    SSD = 3
    REMOTE = 4


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_size(text: str) -> int:
    """``"2GiB"`` -> 2147483648; ``"500MB"`` -> 500000000; plain digits are bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 512MiB, 2GiB, 10GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class TierConfig:
    """One local tier: a directory and how many bytes of files it may hold."""

    tier: Tier
    path: Path
    capacity_bytes: int

    def __post_init__(self) -> None:
        if self.tier is Tier.REMOTE:
            raise ValueError("the remote tier is not a local directory")
        if self.capacity_bytes <= 0:
            raise ValueError(f"tier {self.tier.name.lower()}: capacity must be > 0")


def parse_tier_spec(spec: str) -> TierConfig:
    """``NAME=PATH:SIZE`` with NAME in ram, nvme, ssd."""
    name, sep, rest = spec.partition("=")
    path, sep2, size = rest.rpartition(":")
    if not sep or not sep2 or not path or not size:
        raise ValueError(f"expected NAME=PATH:SIZE (e.g. ram=/dev/shm/helios:2GiB), got {spec!r}")
    try:
        tier = Tier[name.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown tier {name!r}: one of ram, nvme, ssd") from None
    return TierConfig(tier, Path(path), parse_size(size))
