"""Where a model's config.json comes from: inline, or a local Hugging Face-layout directory.

Model ids will resolve through the registry service once it exists; until then a
``model_id`` must be a path to a local directory holding ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgumentError, NotFoundError

__all__ = ["MAX_CONFIG_BYTES", "ConfigSource", "config_from_dir", "inline_config"]

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
    try:
        data = config_file.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"model {model_id!r}: cannot read config.json ({exc})") from None
    config = parse_config_bytes(data, f"{model_id}/config.json")
    return ConfigSource(key="dir:" + _digest(data), load=lambda: config, name=model_id)
