"""Where and how a process exports its spans, from the standard ``OTEL_*`` variables.

What OpenTelemetry's SDK environment specification defines, and Helios honours:

* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as given) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
  (a base: ``/v1/traces`` is added for OTLP/HTTP); Helios' own ``--otlp-endpoint`` /
  ``HELIOS_OTLP_ENDPOINT`` (``HELIOS_<SERVICE>_OTLP_ENDPOINT``) is a base endpoint too, and
  wins over both when set (it is the more specific setting, e.g. ``helios up``'s);
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` (the
  default, as in OpenTelemetry's Python distribution) or ``http/protobuf``;
* ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` (``always_on``, ``always_off``,
  ``traceidratio`` and their ``parentbased_`` forms; default ``parentbased_always_on``);
* ``OTEL_SDK_DISABLED=true``: nothing is exported (trace context is still passed on);
* ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: read by the SDK's resource
  detection (:func:`runtime.tracing.configure_tracing` lets them win over its default
  ``helios-<service>``);
* ``OTEL_EXPORTER_OTLP_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE`` and the
  ``OTEL_BSP_*`` batch settings are read by the exporter and the batch processor themselves.

Settings that make no sense are warned about and replaced by the default, never fatal:
a service must not refuse to start over its telemetry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

__all__ = [
    "GRPC",
    "HTTP_PROTOBUF",
    "TraceExport",
    "sampler_from_env",
    "trace_export_from_env",
]

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
_PROTOCOLS = (GRPC, HTTP_PROTOBUF)
_HTTP_TRACES_PATH = "/v1/traces"
DEFAULT_SAMPLER = "parentbased_always_on"


@dataclass(frozen=True)
class TraceExport:
    """Where spans go: ``endpoint`` (None: nowhere) over ``protocol``; ``sample_ratio`` is
    the share of new traces (no sampled parent) a root such as Envoy starts."""

    endpoint: str | None
    protocol: str = GRPC
    sample_ratio: float = 1.0

    @property
    def insecure(self) -> bool:
        """Plain text unless the endpoint says https (a bare ``host:port`` included)."""
        return urlsplit(self.endpoint or "").scheme != "https"


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def _protocol(environ: Mapping[str, str]) -> str:
    given = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or GRPC
    ).strip()
    if given not in _PROTOCOLS:
        log.warning(
            "OTLP protocol %r is not supported (%s); using %s",
            given,
            ", ".join(_PROTOCOLS),
            GRPC,
            extra={"otlp_protocol": given},
        )
        return GRPC
    return given


def _with_traces_path(base: str) -> str:
    """An OTLP/HTTP base endpoint with the traces path (kept when already there)."""
    parts = urlsplit(base if "://" in base else f"http://{base}")
    if parts.path.rstrip("/").endswith(_HTTP_TRACES_PATH):
        return parts.geturl()
    return parts._replace(path=parts.path.rstrip("/") + _HTTP_TRACES_PATH).geturl()


def trace_export_from_env(
    explicit_endpoint: str | None = None, environ: Mapping[str, str] | None = None
) -> TraceExport:
    """The export this process should make: ``explicit_endpoint`` (``--otlp-endpoint``,
    ``HELIOS_OTLP_ENDPOINT``) first, then the standard variables (see the module doc)."""
    env = os.environ if environ is None else environ
    sampler_name, ratio = _sampler_spec(env)
    root_ratio = 0.0 if sampler_name.endswith("always_off") else ratio
    if _flag(env, "OTEL_SDK_DISABLED"):
        return TraceExport(None, sample_ratio=root_ratio)
    protocol = _protocol(env)
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = (explicit_endpoint or "").strip() or (
        "" if traces else env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    endpoint: str | None = traces or None
    if base:
        endpoint = _with_traces_path(base) if protocol == HTTP_PROTOBUF else base
    return TraceExport(endpoint, protocol, root_ratio)


def _sampler_spec(env: Mapping[str, str]) -> tuple[str, float]:
    """(sampler name, ratio) from OTEL_TRACES_SAMPLER(_ARG); unknown names and bad
    ratios are warned about and replaced by the defaults."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    known = ("always_on", "always_off", "traceidratio")
    if name.removeprefix("parentbased_") not in known:
        log.warning(
            "OTEL_TRACES_SAMPLER=%s is not supported here; using %s",
            name,
            DEFAULT_SAMPLER,
            extra={"sampler": name},
        )
        name = DEFAULT_SAMPLER
    ratio = 1.0
    if name.endswith("traceidratio"):
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            log.warning(
                "OTEL_TRACES_SAMPLER_ARG=%r is not a ratio in [0, 1]; using 1.0",
                arg,
                extra={"sampler_arg": arg},
            )
            ratio = 1.0
    return name, ratio


def sampler_from_env(environ: Mapping[str, str] | None = None) -> Sampler:
    """The SDK sampler that OTEL_TRACES_SAMPLER(_ARG) name."""
    name, ratio = _sampler_spec(os.environ if environ is None else environ)
    root: Sampler
    if name.endswith("always_on"):
        root = ALWAYS_ON
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root
