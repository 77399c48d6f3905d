"""The estimator's settings: its flags and ``HELIOS_ESTIMATOR_*`` variables as one typed,
frozen object (bound by runtime/settings.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from estimator.models import DEFAULT_RESOLVE_TTL_SECONDS
from estimator.service import DEFAULT_TTL_SECONDS
from runtime.settings import Settings, must_be_directory, setting


@dataclasses.dataclass(frozen=True)
class EstimatorSettings(Settings):
    """Everything ``python -m estimator.server`` is told (besides the shared server flags)."""

    cache_ttl_seconds: float = setting(
        DEFAULT_TTL_SECONDS,
        gt=0,
        help="how long an estimate stays cached (env HELIOS_ESTIMATOR_CACHE_TTL_SECONDS)",
    )
    cache_max_entries: int = setting(
        8192, ge=1, help="estimates kept at most (least recently used go first)"
    )
    registry: str = setting(
        "",
        metavar="HOST:PORT",
        help="the registry service: model ids resolve through it first (env"
        " HELIOS_ESTIMATOR_REGISTRY)",
    )
    model_root: tuple[Path, ...] = setting(
        (),
        env="model_roots",
        metavar="DIR",
        check=must_be_directory,
        help="a directory whose HF-layout model directories may be named as model ids"
        " (repeatable; env HELIOS_ESTIMATOR_MODEL_ROOTS, comma-separated); nothing"
        " outside these roots is read",
    )
    resolve_ttl_seconds: float = setting(
        DEFAULT_RESOLVE_TTL_SECONDS,
        gt=0,
        help="how long a model id's resolved version is remembered (aliases move)",
    )
