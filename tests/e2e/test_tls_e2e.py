"""The local mesh under mutual TLS: `helios up --tls` as a process.

A chat completion through Envoy works (Envoy reaches the proxy, the proxy the workers,
over mTLS), a streamed one too (Envoy -> the worker's REST port, over mTLS); every
service's own gRPC port, and a worker's REST port, refuses a plain-text client and a client whose
certificate comes from another CA, and answers one presenting the mesh's client
certificate (the certificates `helios up --tls` wrote to <state-dir>/certs).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helios.v1 import worker_pb2, worker_pb2_grpc
from support.mesh_harness import helios_up

from cli.certs import write_certs
from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

pytestmark = pytest.mark.e2e


@dataclass
class TlsMesh:
    info: dict[str, Any]
    certs: Path  # the mesh's CA and per-service certificates
    root: Path

    def service_ports(self) -> dict[str, int]:
        return {name: int(s["grpc_port"]) for name, s in self.info["services"].items()}


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMesh]:
    root = tmp_path_factory.mktemp("tls-mesh")
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    with helios_up(root, DEFAULT_MODEL_NAME, model_dir, "--tls") as up:
        # cli/up_options.py: --tls writes `helios certs` output to <state-dir>/certs.
        yield TlsMesh(up.info, root / "state" / "certs", root)


def _credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def test_chat_completion_through_envoy_over_mtls(tls_mesh: TlsMesh) -> None:
    assert (tls_mesh.certs / "ca.pem").is_file()
    body = json.dumps(
        {
            "model": tls_mesh.info["models"][0],  # as the registry names it
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "temperature": 0,
        }
    ).encode()
    request = urllib.request.Request(
        f"{tls_mesh.info['rest_url']}/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as error:
        pytest.fail(f"HTTP {error.code}: {error.read().decode(errors='replace')}")
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert reply["usage"]["completion_tokens"] >= 1


def test_every_service_requires_a_mesh_client_certificate(tls_mesh: TlsMesh) -> None:
    ports = tls_mesh.service_ports()
    # The whole mesh: proxy, workers and the supporting services.
    assert "proxy" in ports and any(name.startswith("worker") for name in ports)
    assert len(ports) >= 4, ports
    certs = tls_mesh.certs
    mesh_client = _credentials(certs / "ca.pem", certs / "client.pem", certs / "client.key")
    # Another CA's client certificate (the server's own certificate is trusted, so only
    # the client's certificate can be why the server refuses).
    other = write_certs(tls_mesh.root / "other-ca", ["client"])["client"]
    foreign_client = _credentials(certs / "ca.pem", other.cert, other.key)
    for name, port in ports.items():
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as plain:
                _health(channel)
            assert plain.value.code() == grpc.StatusCode.UNAVAILABLE, name
        with grpc.secure_channel(target, foreign_client) as channel:
            with pytest.raises(grpc.RpcError) as foreign:
                _health(channel)
            assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE, name
        with grpc.secure_channel(target, mesh_client) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING, name


def _rest_port(tls_mesh: TlsMesh, worker: str) -> int:
    certs = tls_mesh.certs
    mesh_client = _credentials(certs / "ca.pem", certs / "client.pem", certs / "client.key")
    target = f"127.0.0.1:{tls_mesh.service_ports()[worker]}"
    with grpc.secure_channel(target, mesh_client) as channel:
        beat = worker_pb2_grpc.WorkerServiceStub(channel).Heartbeat(
            worker_pb2.HeartbeatRequest(), timeout=10
        )
    assert beat.rest_port > 0
    return int(beat.rest_port)


def _get_over_tls(port: int, context: ssl.SSLContext) -> int:
    """The status of ``GET /`` on ``port`` over TLS; an error when the server refuses
    the client (with TLS 1.3 the refusal comes as an alert after the handshake)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nhost: worker\r\n\r\n")
        answer = tls.recv(64)
    if not answer:
        raise ConnectionError("closed without an answer")
    return int(answer.split()[1])


def test_a_streamed_chat_goes_over_the_workers_rest_port_under_mtls(tls_mesh: TlsMesh) -> None:
    body = json.dumps(
        {
            "model": tls_mesh.info["models"][0],
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "stream": True,
        }
    ).encode()
    request = urllib.request.Request(
        f"{tls_mesh.info['rest_url']}/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        events = response.read().decode()
    assert events.rstrip().endswith("data: [DONE]")
    admin = f"http://127.0.0.1:{tls_mesh.info['envoy_admin_port']}"
    with urllib.request.urlopen(f"{admin}/stats?filter=-rest\\.upstream_rq_total$") as stats:
        served = [line for line in stats.read().decode().splitlines() if line.strip()]
    assert served and all(int(line.rsplit(":", 1)[1]) >= 1 for line in served), served
    # The REST port itself: the mesh's client certificate only.
    port = _rest_port(tls_mesh, next(n for n in tls_mesh.service_ports() if n.startswith("worker")))
    certs = tls_mesh.certs
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        plain.request("GET", "/")
        plain.getresponse()
    other = write_certs(tls_mesh.root / "other-ca-rest", ["client"])["client"]
    foreign = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    foreign.load_cert_chain(str(other.cert), str(other.key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_over_tls(port, foreign)
    mesh = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    mesh.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    assert _get_over_tls(port, mesh) == 404  # answered: nothing is served at /
