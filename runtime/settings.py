"""Typed settings: one binder from a service's settings dataclass to its flags and
environment variables.

A service declares its settings once, as a frozen dataclass of :class:`Settings` whose
fields are made with :func:`setting` (help text, flag, environment name, bounds,
choices, a check). :func:`add_arguments` turns the fields into argparse arguments and
:func:`from_namespace` turns what was parsed into a validated, frozen instance, which is
what the service's builders take. A settings object built by hand (tests, embedding) is
validated the same way, so one that exists is a usable one; a bad value raises
:class:`runtime.config.ConfigError` naming the field.

Precedence, highest first (the same for every service and every field): the flag,
``HELIOS_<SERVICE>_<ENV>``, ``HELIOS_<ENV>``, the field's default. ``<ENV>`` is the
field's name unless its setting names another (``--worker`` reads ``..._WORKERS``).
The environment is read when the parser is built, and its text goes through the
flag's own conversion, so ``HELIOS_PROXY_PREFETCH=abc`` fails as ``--prefetch`` does.
A repeatable flag's variable holds a list (``separator``-separated, empty items
skipped); flags given on the command line add to that list.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from runtime.config import (
    EVENT_LOOPS,
    LOG_FORMATS,
    LOG_LEVELS,
    ConfigError,
    ServerSettings,
    env_default,
    env_names,
    settings_from_args,
)

__all__ = [
    "SERVER_GROUP",
    "ServerFlags",
    "Setting",
    "Settings",
    "add_arguments",
    "from_namespace",
    "must_be_directory",
    "parse_settings",
    "setting",
]

S = TypeVar("S", bound="Settings")

_METADATA_KEY = "helios.setting"
SERVER_GROUP = "server (shared by every Helios service)"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field is bound and checked (see :func:`setting`)."""

    help: str | None = None
    flag: str | None = None  # default: --<field-name>
    env: str | None = None  # the <ENV> of its variables; default: the field's name
    from_env: bool = True
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    check: Callable[[Any], None] | None = None  # raises ValueError; per item of a list
    parse: Callable[[str], Any] | None = None  # text -> value (per item of a list)
    separator: str = ","  # between the items of a repeatable flag's variable
    metavar: str | None = None
    group: str | None = None  # an argparse argument group's title
    negatable: bool = False  # a bool flag with --no-<flag> as well
    show_env: bool = False  # help ends "(env A or B; default D)"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    **how: Any,
) -> Any:
    """A settings field: its default (or a factory, called when the parser is built)
    and the :class:`Setting` keywords. Typed ``Any`` so that ``port: int = setting(0)``
    type-checks as the field's own type."""
    metadata = {_METADATA_KEY: Setting(**how)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, list):
        raise TypeError("a repeatable setting's default is a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def must_be_directory(root: Path) -> None:
    """A ``check`` for a path setting that names a directory which must exist (a model
    root, an import root): ValueError, which names the path, otherwise."""
    if not root.expanduser().is_dir():
        raise ValueError(f"{root} is not a directory")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every service's settings: fields checked against their :class:`Setting`
    on construction, then :meth:`check` for rules that span fields."""

    def __post_init__(self) -> None:
        for field, spec, _kind, _item in _bound_fields(type(self)):
            _check_field(field.name, getattr(self, field.name), spec)
        self.check()

    def check(self) -> None:
        """Rules across fields; raise :class:`ConfigError` naming the field to change."""


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


_CONVERTERS: dict[type, Callable[[str], Any] | None] = {
    int: _int_arg,
    float: _float_arg,
    Path: Path,
    str: None,
}


def _kind(hint: Any) -> tuple[str, type]:
    """("bool" | "scalar" | "optional" | "list", the value's or item's type)."""
    if hint is bool:
        return "bool", bool
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return "list", args[0]
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return "optional", inner
    return "scalar", hint


def _bound_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Setting, str, type]]:
    hints = typing.get_type_hints(cls)
    bound = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(_METADATA_KEY)
        if isinstance(spec, Setting):
            kind, item = _kind(hints[field.name])
            bound.append((field, spec, kind, item))
    return bound


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is dataclasses.MISSING:
        return None
    return field.default


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _env_bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false from the environment, got {text!r}")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, service: str
) -> argparse.ArgumentParser:
    """Add ``cls``'s fields to ``parser`` as flags whose defaults come from the
    environment of ``service`` (read now); returns ``parser``."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, spec, kind, item in _bound_fields(cls):
        target: argparse._ActionsContainer = parser
        if spec.group is not None:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        env = spec.env or field.name
        text = env_default(service, env) if spec.from_env else None
        default = _default(field)
        convert = spec.parse or _CONVERTERS.get(item)
        kwargs: dict[str, Any] = {"dest": field.name}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction if spec.negatable else "store_true"
            kwargs["default"] = default if text is None else _env_bool(field.name, text)
        elif kind == "list":
            kwargs["action"] = "append"
            kwargs["type"] = convert
            items = list(default) if text is None else text.split(spec.separator)
            # A variable's items go through the same conversion as the flag's.
            kwargs["default"] = [
                convert(i) if convert and isinstance(i, str) else i for i in items if i != ""
            ]
        else:
            kwargs["type"] = convert
            # Text (the variable's) is converted by argparse like a flag's value.
            kwargs["default"] = default if text is None else text
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        if spec.metavar is not None:
            kwargs["metavar"] = spec.metavar
        help_ = spec.help
        if spec.show_env and help_ is not None:
            first, second = env_names(service, env)
            help_ = f"{help_} (env {first} or {second}; default {_shown(default)})"
        target.add_argument(spec.flag or "--" + field.name.replace("_", "-"), help=help_, **kwargs)
    return parser


def from_namespace(cls: type[S], namespace: argparse.Namespace) -> S:
    """The validated settings in ``namespace`` (parsed with :func:`add_arguments`)."""
    values: dict[str, Any] = {}
    for field, _spec, kind, _item in _bound_fields(cls):
        if not hasattr(namespace, field.name):
            raise ConfigError(field.name, f"missing; was add_arguments() given {cls.__name__}?")
        value = getattr(namespace, field.name)
        # An empty item (--worker '') adds nothing, as an empty variable sets nothing.
        values[field.name] = tuple(v for v in value if v != "") if kind == "list" else value
    return cls(**values)


def parse_settings(
    parser: argparse.ArgumentParser, cls: type[S], service: str, argv: Sequence[str] | None
) -> tuple[ServerSettings, S]:
    """Parse ``argv`` with ``parser`` (built with the shared and ``cls``'s flags): the
    shared server settings and the service's own, both validated."""
    namespace = parser.parse_args(argv)
    return settings_from_args(namespace, service), from_namespace(cls, namespace)


def _check_field(name: str, value: Any, spec: Setting) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if item is None:
            continue
        if spec.choices is not None and item not in spec.choices:
            raise ConfigError(name, f"must be one of {', '.join(spec.choices)}, got {item!r}")
        if isinstance(item, int | float) and not isinstance(item, bool):
            _check_bounds(name, item, spec)
        if spec.check is not None:
            try:
                spec.check(item)
            except ConfigError:
                raise  # already names its field
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None


def _check_bounds(name: str, value: float, spec: Setting) -> None:
    # Written as "not (ok)" so that NaN, which compares false with everything, fails.
    for bound, ok, sign in (
        (spec.ge, lambda b: value >= b, ">="),
        (spec.gt, lambda b: value > b, ">"),
        (spec.le, lambda b: value <= b, "<="),
    ):
        if bound is not None and not ok(bound):
            raise ConfigError(name, f"must be {sign} {bound:g}, got {value}")
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(name, "must be a number, got nan")


def _server_flag(default: Any, help: str) -> Any:
    """A field of :class:`ServerFlags`: in the shared server group, its help naming its
    environment variables and default."""
    return setting(default, help=help, group=SERVER_GROUP, show_env=True)


@dataclasses.dataclass(frozen=True)
class ServerFlags:
    """The flags every server shares, as the binder declares them: parsed into
    :class:`runtime.config.ServerSettings` by :func:`runtime.config.settings_from_args`
    (which validates them), so never instantiated."""

    host: str = _server_flag("127.0.0.1", "address to bind the gRPC server to")
    port: int = _server_flag(0, "gRPC port; 0 picks a free one")
    metrics_port: int = _server_flag(0, "Prometheus /metrics port; 0 picks a free one, -1 disables")
    log_level: str = _server_flag("INFO", f"one of {', '.join(LOG_LEVELS)}")
    log_format: str = _server_flag("json", f"one of {', '.join(LOG_FORMATS)}")
    event_loop: str = _server_flag("uvloop", f"one of {', '.join(EVENT_LOOPS)}")
    drain_seconds: float = _server_flag(10.0, "on SIGTERM, how long in-flight RPCs get to finish")
    ready_file: Path | None = _server_flag(
        None, "write {service, grpc_port, metrics_port, pid} JSON here once serving"
    )
    otlp_endpoint: str | None = _server_flag(None, "OTLP/gRPC collector for traces")
    # Mutual TLS: all three or none. The same certificate serves and, on outgoing
    # channels, identifies this service as a client (see runtime/tls.py).
    tls_cert: Path | None = _server_flag(None, "PEM certificate chain; enables mutual TLS")
    tls_key: Path | None = _server_flag(None, "PEM private key of --tls-cert")
    tls_ca: Path | None = _server_flag(
        None, "PEM CA that clients' and peers' certificates chain to"
    )
