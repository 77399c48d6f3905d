"""Envoy's mutual-TLS transport socket to a gRPC upstream: one definition for the edge's
static clusters (edge/clusters.py) and the control plane's model clusters
(proxy/xds_resources.py), which must not import each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TLS_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)


def upstream_tls_socket(cert: Path, key: Path, ca: Path, sni: str) -> dict[str, Any]:
    """The transport socket (Envoy's JSON) presenting ``cert``/``key``, trusting ``ca``
    and speaking HTTP/2 (gRPC) to an upstream named ``sni``."""
    return {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "sni": sni,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(Path(cert).resolve())},
                        "private_key": {"filename": str(Path(key).resolve())},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(Path(ca).resolve())}},
            },
        },
    }
