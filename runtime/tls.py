"""Mutual TLS between Helios services, outside a service mesh (``helios up --tls``).

A service with :class:`TlsSettings` serves only clients that present a certificate
signed by the settings' CA (``require_client_auth``), and presents its own certificate
(issued for both server and client auth by ``helios certs``) on the channels it opens:
:func:`runtime.server.run` installs it as the process' default client credentials, so
every :func:`runtime.channels.create_channel` (proxy -> worker, worker -> storaged, ...)
is mutual TLS without each caller knowing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = [
    "TlsError",
    "TlsSettings",
    "channel_credentials",
    "server_credentials",
    "server_ssl_context",
]


class TlsError(ValueError):
    """A TLS file is missing or unreadable; ``field`` names the setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field


@dataclass(frozen=True)
class TlsSettings:
    """PEM files: this service's certificate chain and key, and the CA its peers chain to."""

    cert: Path
    key: Path
    ca: Path

    def __post_init__(self) -> None:
        for field in ("cert", "key", "ca"):
            path = Path(getattr(self, field))
            object.__setattr__(self, field, path)
            if not path.is_file():
                raise TlsError(f"tls_{field}", f"no such file: {path}")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert chain, private key, CA bundle) as PEM bytes."""
        out = []
        for field in ("cert", "key", "ca"):
            path: Path = getattr(self, field)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise TlsError(f"tls_{field}", f"cannot read {path}: {exc}") from exc
            if b"-----BEGIN " not in data:
                raise TlsError(f"tls_{field}", f"{path} is not PEM")
            out.append(data)
        return out[0], out[1], out[2]


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate from ``tls.ca``."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Client side: trust only ``tls.ca`` and present this service's certificate."""
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """:func:`server_credentials` for a plain asyncio server (the worker's REST port):
    TLS 1.2 or later, clients must present a certificate from ``tls.ca``."""
    tls.read()  # the same checks (readable, PEM) and errors as the gRPC side
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context
