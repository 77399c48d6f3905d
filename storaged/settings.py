"""storaged's settings: its flags and ``HELIOS_STORAGED_*`` variables as one typed,
frozen object (bound by runtime/settings.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from runtime.settings import Settings, setting
from storaged.tiers import TierConfig, parse_tier_spec

logger = logging.getLogger(__name__)


def default_tier() -> str:
    """Without --tier (e.g. a bare `helios up`): one 10 GiB SSD tier in the temp dir."""
    return f"ssd={Path(tempfile.gettempdir()) / f'helios-storaged-{os.getuid()}'}:10GiB"


@dataclasses.dataclass(frozen=True)
class StoragedSettings(Settings):
    """Everything ``python -m storaged.server`` is told (besides the shared server flags)."""

    tier: tuple[str, ...] = setting(
        (),
        env="tiers",
        metavar="NAME=PATH:SIZE",
        check=parse_tier_spec,
        help="a local tier (ram, nvme, ssd), e.g. ram=/dev/shm/helios:2GiB (repeatable)",
    )
    registry: str = setting(
        "localhost:50051",
        help="registry address (manifests, and blobs unless --http-base is given)",
    )
    http_base: str | None = setting(
        None,
        help="fetch blobs with HTTP(S) range GETs from <URL>/<sha256> instead of the registry",
    )
    peer: tuple[str, ...] = setting(
        (),
        from_env=False,
        metavar="HOST:PORT",
        help="another storaged to try first for a file (ReadChunk), repeatable",
    )
    connections: int = setting(8, ge=1, help="chunks downloaded at once")
    state_dir: Path | None = setting(
        None, from_env=False, help="pins and versions (default: slowest tier)"
    )

    @property
    def tiers(self) -> list[TierConfig]:
        """The ``--tier`` entries (checked on construction); without any, the default
        tier (logged)."""
        specs = self.tier
        if not specs:
            logger.warning("no --tier given; using %s", default_tier())
            specs = (default_tier(),)
        return [parse_tier_spec(spec) for spec in specs]
