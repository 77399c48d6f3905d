"""`helios certs`: a private CA and one certificate per Helios service, for mutual TLS.

Each service certificate is good for both ends of a connection (server and client auth),
carries the service's name as its common name, and lists as subject alternative names
127.0.0.1, ::1, localhost and the service's Kubernetes names
(``helios-<svc>``, ``.<ns>``, ``.<ns>.svc``, ``.<ns>.svc.cluster.local``). Re-running with
the same ``--out`` keeps the existing CA and re-issues the service certificates, so peers
already trusting the CA keep working. Every file is written atomically; keys are 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.tls import TlsSettings

__all__ = [
    "DEFAULT_SERVICES",
    "add_certs_command",
    "ensure_ca",
    "issue_certificate",
    "kubernetes_names",
    "write_certs",
]

# Every process of the mesh; "gateway" is Envoy, "client" the launcher and CLI tools.
DEFAULT_SERVICES: tuple[str, ...] = (
    "gateway",
    "proxy",
    "estimator",
    "registry",
    "storaged",
    "worker",
    "client",
)
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_DAYS = 365


def kubernetes_names(service: str, namespace: str) -> list[str]:
    base = f"helios-{service}"
    return [
        base,
        f"{base}.{namespace}",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}.svc.cluster.local",
    ]


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ensure_ca(
    out_dir: Path, *, days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the CA from ``out_dir``, or create it there."""
    cert_path, key_path = out_dir / CA_CERT, out_dir / CA_KEY
    if cert_path.is_file() and key_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Helios mesh CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    dns_names: Iterable[str],
    ip_addresses: Iterable[str],
    *,
    days: int = DEFAULT_DAYS,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``common_name``, valid as server and as client."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ip_addresses)]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_certs(
    out_dir: Path,
    services: Sequence[str] = DEFAULT_SERVICES,
    *,
    namespace: str = "helios",
    extra_dns: Sequence[str] = (),
    extra_ips: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
) -> dict[str, TlsSettings]:
    """Create (or reuse) the CA in ``out_dir`` and issue ``<service>.pem``/``.key`` for each.

    Returns each service's :class:`TlsSettings` (its cert, key and the CA).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out_dir = Path(out_dir)
    ca_key, ca_cert = ensure_ca(out_dir)
    result = {}
    for service in services:
        if not service or not service.replace("-", "").isalnum():
            raise ValueError(f"not a service name: {service!r}")
        cert, key = issue_certificate(
            ca_key,
            ca_cert,
            service,
            ["localhost", *kubernetes_names(service, namespace), *extra_dns],
            ["127.0.0.1", "::1", *extra_ips],
            days=days,
        )
        _write_atomically(out_dir / f"{service}.key", key, 0o600)
        _write_atomically(out_dir / f"{service}.pem", cert, 0o644)
        result[service] = TlsSettings(
            cert=out_dir / f"{service}.pem", key=out_dir / f"{service}.key", ca=out_dir / CA_CERT
        )
    return result


def _certs_command(args: argparse.Namespace) -> int:
    services = tuple(args.service) or DEFAULT_SERVICES
    try:
        written = write_certs(
            args.out,
            services,
            namespace=args.namespace,
            extra_dns=args.dns,
            extra_ips=args.ip,
            days=args.days,
        )
    except ValueError as exc:
        raise SystemExit(f"helios certs: {exc}") from None
    print(f"CA: {args.out / CA_CERT}")
    for service, tls in written.items():
        print(f"{service}: --tls-cert {tls.cert} --tls-key {tls.key} --tls-ca {tls.ca}")
    return 0


def add_certs_command(subparsers: Any) -> None:
    """Register ``helios certs`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "certs", help="make a CA and per-service certificates for mutual TLS"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write PEM files")
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        help=f"issue for this service (repeatable; default: {', '.join(DEFAULT_SERVICES)})",
    )
    parser.add_argument("--namespace", default="helios", help="Kubernetes namespace for SANs")
    parser.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    parser.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="certificate lifetime")
    parser.set_defaults(handler=_certs_command)
