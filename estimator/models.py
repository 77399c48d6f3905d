"""Where a model's config.json comes from: inline, the registry, or a local directory.

A ``model_id`` resolves (:class:`ModelResolver`) through the registry first
(``ResolveModel`` then ``GetConfig``; the config is cached per resolved *version*, so the
estimate caches key on it too), then to an HF-layout directory under one of the configured
model roots (``--model-root``). Nothing outside those roots is ever read: a client cannot
make the estimator open arbitrary files. Anything else is NOT_FOUND naming the id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from estimator.cache import TtlCache
from runtime.errors import HeliosError, InvalidArgumentError, NotFoundError, UnavailableError
from runtime.limits import quote

__all__ = [
    "DEFAULT_RESOLVE_TTL_SECONDS",
    "MAX_CONFIG_BYTES",
    "ConfigSource",
    "ModelResolver",
    "RegistryConfigs",
    "config_from_dir",
    "inline_config",
]

logger = logging.getLogger(__name__)

# How long "org/name" -> version is remembered: aliases move, versions never change.
DEFAULT_RESOLVE_TTL_SECONDS = 10.0

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config.json is a few KB; refuse anything absurd


@dataclass(frozen=True)
class ConfigSource:
    """A config and the key that identifies its content (for the caches)."""

    key: str
    load: Callable[[], Mapping[str, Any]]
    name: str = ""  # the model id or directory, for messages


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def inline_config(config: Mapping[str, Any]) -> ConfigSource:
    """A config given as a mapping; keyed on its canonical JSON."""
    if not isinstance(config, Mapping):
        raise InvalidArgumentError("config: must be a JSON object (a model's config.json)")
    try:
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"config: not JSON-serializable: {exc}") from None
    return ConfigSource(key="json:" + _digest(canonical), load=lambda: config)


def parse_config_bytes(data: bytes, where: str) -> dict[str, Any]:
    """``data`` as a config object; InvalidArgumentError naming ``where`` otherwise."""
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidArgumentError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where}: must hold a JSON object")
    return value


def config_from_dir(model_id: str) -> ConfigSource:
    """The config.json of the local directory ``model_id``, else NotFoundError."""
    if not model_id:
        raise InvalidArgumentError("model_id: give a model id or an inline config")
    path = Path(model_id).expanduser()
    config_file = path / "config.json"
    if not (path.is_dir() and config_file.is_file()):
        raise NotFoundError(
            f"model {model_id!r} not found: it is not a local directory holding a config.json,"
            " and resolving model ids through the registry is not implemented yet (the"
            " registry service does not exist yet); give a local model directory or the"
            " config inline"
        )
    return _read_config_file(config_file, model_id)


class RegistryConfigs(Protocol):
    """The registry, as the estimator uses it (raises the domain errors)."""

    async def resolve(self, reference: str) -> tuple[str, str]:
        """``reference`` -> (canonical model id, version)."""
        ...

    async def config_json(self, model_id: str, version: str) -> bytes:
        """That version's config.json."""
        ...


def _read_config_file(config_file: Path, model_id: str) -> ConfigSource:
    try:
        data = config_file.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"model {model_id!r}: cannot read config.json ({exc})") from None
    config = parse_config_bytes(data, f"{model_id}/config.json")
    return ConfigSource(key="dir:" + _digest(data), load=lambda: config, name=model_id)


class ModelResolver:
    """Model id -> config source: the registry, then directories under ``roots``."""

    def __init__(
        self,
        registry: RegistryConfigs | None = None,
        roots: Sequence[Path] = (),
        *,
        ttl_seconds: float = 300.0,
        resolve_ttl_seconds: float = DEFAULT_RESOLVE_TTL_SECONDS,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.roots = tuple(Path(r).expanduser().resolve() for r in roots)
        self.versions: TtlCache[str, tuple[str, str]] = TtlCache(
            resolve_ttl_seconds, max_entries, clock
        )
        self.configs: TtlCache[tuple[str, str], ConfigSource] = TtlCache(
            ttl_seconds, max_entries, clock
        )

    async def source(self, model_id: str) -> ConfigSource:
        if not model_id:
            raise InvalidArgumentError("model_id: give a model id or an inline config")
        if "\x00" in model_id or len(model_id) > 1024:
            raise InvalidArgumentError("model_id: not a valid model id")
        registry_error: HeliosError | None = None
        if self.registry is not None:
            try:
                return await self._from_registry(model_id)
            except (NotFoundError, InvalidArgumentError):
                pass  # not a registry id: maybe a directory under a root
            except HeliosError as exc:  # registry down: a local directory may still do
                registry_error = exc
                logger.warning(
                    "registry unavailable for a model id",
                    extra={"model_id": model_id, "error": exc.message},
                )
        local = await asyncio.to_thread(self._local_dir, model_id) if self.roots else None
        if local is not None:
            return await asyncio.to_thread(_read_config_file, local / "config.json", model_id)
        if registry_error is not None:
            raise UnavailableError(
                f"model {quote(model_id)}: the registry could not be asked"
                f" ({registry_error.message})"
                " and it is no local model directory"
            )
        where = ["the registry" if self.registry is not None else "", "the model roots"]
        raise NotFoundError(
            f"model {quote(model_id)} not found in {' or '.join(w for w in where if w)}"
            + ("" if self.registry is not None else " (no registry is configured)")
            + "; import it into the registry, or give the config inline"
        )

    async def _from_registry(self, model_id: str) -> ConfigSource:
        assert self.registry is not None
        resolved = self.versions.get(model_id)
        if resolved is None:
            resolved = await self.registry.resolve(model_id)
            self.versions.put(model_id, resolved)
        source = self.configs.get(resolved)
        if source is None:
            canonical, version = resolved
            data = await self.registry.config_json(canonical, version)
            name = f"{canonical}@{version}"
            config = parse_config_bytes(data, f"{name}/config.json")
            source = ConfigSource(key=f"reg:{name}", load=lambda: config, name=name)
            self.configs.put(resolved, source)
        return source

    def _local_dir(self, model_id: str) -> Path | None:
        """The directory ``model_id`` names inside a root (absolute, or relative to a
        root), holding a config.json; None otherwise (also for paths escaping a root)."""
        given = Path(model_id).expanduser()
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        for candidate in candidates:
            try:
                path = candidate.resolve()
                if not any(path == root or root in path.parents for root in self.roots):
                    continue
                if (path / "config.json").is_file():
                    return path
            except (OSError, RuntimeError, ValueError):
                # A name too long for the filesystem, a symlink loop, an embedded NUL:
                # no such model here (the client's input, not the estimator's failure).
                continue
        return None
