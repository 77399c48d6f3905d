"""Settings every Helios server shares, read from flags with environment defaults.

Precedence, highest first: command-line flag, ``HELIOS_<SERVICE>_<FIELD>``,
``HELIOS_<FIELD>``, built-in default. The service-specific variable wins over the
shared one so a single environment (one ``helios up`` shell, one pod spec) can give
every service the same log level while still giving each its own port.

A service's own settings are a dataclass that runtime/settings.py binds to the same
parser (and to the same variables); this module owns the shared ones below.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from runtime.tls import TlsError, TlsSettings

__all__ = [
    "EVENT_LOOPS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "METRICS_DISABLED",
    "ConfigError",
    "ServerSettings",
    "add_server_arguments",
    "env_default",
    "env_names",
    "settings_from_args",
]

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: tuple[str, ...] = ("json", "console")
# uvloop: libuv's loop, what vLLM's own server runs on; a gRPC hop relaying a token costs
# ~0.15-0.2 ms less wall time on it than on asyncio's default loop (measured, one stream).
# asyncio: the standard library's, for debugging and for platforms without uvloop.
EVENT_LOOPS: tuple[str, ...] = ("uvloop", "asyncio")

# Sentinel for "metrics endpoint switched off"; 0 already means "pick a free port".
METRICS_DISABLED = -1


class ConfigError(ValueError):
    """A setting is invalid. ``field`` names it so the message can point at the flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ServerSettings:
    """What :func:`runtime.server.start_server` needs to bring a server up.

    Validated on construction, so a settings object that exists is a usable one,
    whether it came from flags or was built by hand (tests, embedding).
    """

    service: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: let the OS pick a free port; the bound one is reported back
    metrics_port: int = 0  # 0: pick a free port; -1: no metrics endpoint
    log_level: str = "INFO"
    log_format: str = "json"  # "json" | "console"
    event_loop: str = "uvloop"  # one of EVENT_LOOPS
    drain_seconds: float = 10.0  # grace given to in-flight RPCs on shutdown
    ready_file: Path | None = None  # written atomically once serving; launchers wait on it
    otlp_endpoint: str | None = None  # e.g. "localhost:4317"; None: spans are not exported
    # Mutual TLS (cert, key, client CA); None: plain-text. Consumed by
    # ``runtime.server._server_credentials`` and, for outgoing channels, by ``run``.
    tls: TlsSettings | None = None

    def __post_init__(self) -> None:
        if not self.service or not self.service.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("service", f"must be a non-empty identifier, got {self.service!r}")
        if not self.host:
            raise ConfigError("host", "must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535, got {self.port}")
        if not (self.metrics_port == METRICS_DISABLED or 0 <= self.metrics_port <= 65535):
            raise ConfigError(
                "metrics_port", f"must be in 0..65535 or -1 (disabled), got {self.metrics_port}"
            )
        level = str(self.log_level).upper()
        if level not in LOG_LEVELS:
            raise ConfigError(
                "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        # Frozen dataclass: normalising needs object.__setattr__.
        object.__setattr__(self, "log_level", level)
        fmt = str(self.log_format).lower()
        if fmt not in LOG_FORMATS:
            raise ConfigError(
                "log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        object.__setattr__(self, "log_format", fmt)
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                "event_loop", f"must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if not self.drain_seconds >= 0:  # also rejects NaN
            raise ConfigError("drain_seconds", f"must be >= 0, got {self.drain_seconds}")
        if self.otlp_endpoint == "":
            object.__setattr__(self, "otlp_endpoint", None)

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port != METRICS_DISABLED


def env_names(service: str, field: str) -> tuple[str, str]:
    """``field``'s variables, the service's own first: ``HELIOS_<SERVICE>_<FIELD>``,
    ``HELIOS_<FIELD>``."""
    svc = service.upper().replace("-", "_")
    fld = field.upper().replace("-", "_")
    return f"HELIOS_{svc}_{fld}", f"HELIOS_{fld}"


@overload
def env_default(service: str, field: str) -> str | None: ...
@overload
def env_default(service: str, field: str, default: str) -> str: ...
@overload
def env_default(service: str, field: str, default: str | None) -> str | None: ...
def env_default(service: str, field: str, default: str | None = None) -> str | None:
    """The environment's value for ``field`` (service-specific first), else ``default``.

    Every setting is read through it (runtime/settings.py binds them), so every service
    and every field share the same precedence.
    """
    for name in env_names(service, field):
        value = os.environ.get(name)
        if value is not None and value != "":
            return value
    return default


def add_server_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    """Add the shared server flags to ``parser``; defaults are read from the environment now.

    The flags are :class:`runtime.settings.ServerFlags`, bound like every service's own
    settings: a bad ``HELIOS_WORKER_PORT=abc`` fails as ``--port``.
    """
    # Imported here: runtime.settings builds on this module (ConfigError, env_default).
    from runtime.settings import ServerFlags, add_arguments

    add_arguments(parser, ServerFlags, service)


def settings_from_args(ns: argparse.Namespace, service: str) -> ServerSettings:
    """Build validated :class:`ServerSettings` from a parsed namespace.

    Raises :class:`ConfigError` naming the offending field.
    """

    def get(field: str) -> Any:
        if not hasattr(ns, field):
            raise ConfigError(field, "missing; was add_server_arguments() called on the parser?")
        return getattr(ns, field)

    ready = get("ready_file")
    otlp = get("otlp_endpoint")
    try:
        port = int(get("port"))
    except (TypeError, ValueError):
        raise ConfigError("port", f"expected an integer, got {get('port')!r}") from None
    try:
        metrics_port = int(get("metrics_port"))
    except (TypeError, ValueError):
        raise ConfigError(
            "metrics_port", f"expected an integer, got {get('metrics_port')!r}"
        ) from None
    try:
        drain = float(get("drain_seconds"))
    except (TypeError, ValueError):
        raise ConfigError(
            "drain_seconds", f"expected a number, got {get('drain_seconds')!r}"
        ) from None
    tls_paths = {f: getattr(ns, f, None) for f in ("tls_cert", "tls_key", "tls_ca")}
    given = {f: v for f, v in tls_paths.items() if v not in (None, "")}
    tls: TlsSettings | None = None
    if given:
        missing = sorted(set(tls_paths) - set(given))
        if missing:
            raise ConfigError(
                missing[0],
                "--tls-cert, --tls-key and --tls-ca go together; "
                f"missing {', '.join('--' + m.replace('_', '-') for m in missing)}",
            )
        try:
            tls = TlsSettings(
                cert=Path(str(given["tls_cert"])),
                key=Path(str(given["tls_key"])),
                ca=Path(str(given["tls_ca"])),
            )
        except TlsError as exc:
            raise ConfigError(exc.field, str(exc)) from None
    return ServerSettings(
        service=service,
        host=str(get("host")),
        port=port,
        metrics_port=metrics_port,
        log_level=str(get("log_level")),
        log_format=str(get("log_format")),
        event_loop=str(get("event_loop")),
        drain_seconds=drain,
        ready_file=None if ready in (None, "") else Path(str(ready)),
        otlp_endpoint=None if otlp in (None, "") else str(otlp),
        tls=tls,
    )


def helios_home() -> Path:
    """Where Helios keeps its state on this machine (models, registry, caches):
    ``$HELIOS_HOME``, default ``~/.cache/helios``. One definition for every process."""
    return Path(os.environ.get("HELIOS_HOME") or "~/.cache/helios").expanduser()
