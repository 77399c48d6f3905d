"""Mutual TLS on every Helios service: started as real processes with --tls-* flags, each
refuses a client with no certificate or one from another CA, and serves a client with a
certificate from the mesh CA. Also: helios certs output, config validation, and the
process-default client credentials that make outgoing hops mutual TLS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.certs import write_certs
from runtime.channels import create_channel, set_default_client_tls
from runtime.config import ConfigError, add_server_arguments, settings_from_args
from runtime.tls import TlsSettings, channel_credentials

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0

# module -> extra arguments it needs to start with nothing else running.
# The proxy starts last, pointed at the worker: its hop to the worker is mutual TLS too.
SERVICES: dict[str, list[str]] = {
    "estimator": [],
    "registry": ["--data-dir", "{tmp}/registry"],
    "storaged": ["--state-dir", "{tmp}/storaged", "--tier", "ram={tmp}/ram:64MiB"],
    "worker": ["--worker-id", "w0"],
    "proxy": ["--worker", "127.0.0.1:{worker_port}"],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, TlsSettings]]:
    base = tmp_path_factory.mktemp("pki")
    return {
        "mesh": write_certs(base / "mesh", [*SERVICES, "client"]),
        "rogue": write_certs(base / "rogue", ["client"]),
    }


@pytest.fixture(scope="module")
def tls_services(
    pki: dict[str, dict[str, TlsSettings]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    tmp = tmp_path_factory.mktemp("svc")
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"}
    try:
        ports: dict[str, int] = {}

        def start(name: str, extra: list[str]) -> None:
            tls = pki["mesh"][name]
            ready = tmp / f"{name}.ready.json"
            log = (tmp / f"{name}.log").open("wb")
            args = [a.format(tmp=tmp, worker_port=ports.get("worker")) for a in extra]
            procs[name] = (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        f"{name}.server",
                        "--port",
                        "0",
                        "--metrics-port",
                        "-1",
                        "--ready-file",
                        str(ready),
                        "--tls-cert",
                        str(tls.cert),
                        "--tls-key",
                        str(tls.key),
                        "--tls-ca",
                        str(tls.ca),
                        *args,
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                ready,
            )

        def wait_all() -> None:
            deadline = time.monotonic() + READY_TIMEOUT
            while len(ports) < len(procs):
                poll_once(deadline)

        def poll_once(deadline: float) -> None:
            for name, (proc, ready) in procs.items():
                if name in ports:
                    continue
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited: {(tmp / f'{name}.log').read_text()[-3000:]}")
                if ready.exists():
                    ports[name] = int(json.loads(ready.read_text())["grpc_port"])
            if time.monotonic() > deadline:
                pytest.fail(f"not ready: {sorted(set(procs) - set(ports))}")
            time.sleep(0.1)

        for name, extra in SERVICES.items():
            if name != "proxy":
                start(name, extra)
        wait_all()
        start("proxy", SERVICES["proxy"])
        wait_all()
        yield ports
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.secure_channel(target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


@pytest.mark.parametrize("service", list(SERVICES))
async def test_deploy_mtls_service_refuses_strangers_and_serves_the_mesh(
    service: str, tls_services: dict[str, int], pki: dict[str, dict[str, TlsSettings]]
) -> None:
    port = tls_services[service]
    mesh_ca = pki["mesh"]["client"].ca.read_bytes()
    # Mesh client certificate: served.
    assert await _health(port, channel_credentials(pki["mesh"]["client"])) == (
        health_pb2.HealthCheckResponse.SERVING
    )
    # Plain-text client: the TLS server cannot speak to it.
    with pytest.raises(grpc.aio.AioRpcError) as plain:
        await _health(port, None)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the server but presents no client certificate: handshake refused.
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await _health(port, grpc.ssl_channel_credentials(root_certificates=mesh_ca))
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA (the client trusts the server, the server not it).
    rogue = pki["rogue"]["client"]
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await _health(
            port,
            grpc.ssl_channel_credentials(
                root_certificates=mesh_ca,
                private_key=rogue.key.read_bytes(),
                certificate_chain=rogue.cert.read_bytes(),
            ),
        )
    assert stranger.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_deploy_mtls_default_client_tls_reaches_a_tls_service(
    tls_services: dict[str, int], pki: dict[str, dict[str, TlsSettings]]
) -> None:
    """What runtime.server.run installs: create_channel() without tls= presents the cert."""
    target = f"127.0.0.1:{tls_services['estimator']}"
    set_default_client_tls(channel_credentials(pki["mesh"]["proxy"]))
    try:
        async with create_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        set_default_client_tls(None)
    async with create_channel(target) as channel:  # default cleared: plain-text again
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )


def test_deploy_certs_have_mesh_and_kubernetes_names(tmp_path: Path) -> None:
    written = write_certs(tmp_path, ["proxy"], namespace="prod")
    cert = x509.load_pem_x509_certificate(written["proxy"].cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {"localhost", "helios-proxy.prod.svc.cluster.local", "helios-proxy"} <= dns
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (written["proxy"].key.stat().st_mode & 0o777) == 0o600
    ca_before = (tmp_path / "ca.pem").read_bytes()
    write_certs(tmp_path, ["worker"])  # a second run keeps the CA
    assert (tmp_path / "ca.pem").read_bytes() == ca_before


def test_deploy_tls_flags_go_together(tmp_path: Path) -> None:
    import argparse

    tls = write_certs(tmp_path, ["proxy"])["proxy"]
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, "proxy")
    ok = settings_from_args(
        parser.parse_args(
            ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]
        ),
        "proxy",
    )
    assert ok.tls == tls
    assert settings_from_args(parser.parse_args([]), "proxy").tls is None
    with pytest.raises(ConfigError, match="tls_key"):
        settings_from_args(
            parser.parse_args(["--tls-cert", str(tls.cert), "--tls-ca", str(tls.ca)]), "proxy"
        )
    with pytest.raises(ConfigError, match="no such file"):
        settings_from_args(
            parser.parse_args(
                [
                    "--tls-cert",
                    str(tmp_path / "nope.pem"),
                    "--tls-key",
                    str(tls.key),
                    "--tls-ca",
                    str(tls.ca),
                ]
            ),
            "proxy",
        )


async def test_deploy_tls_env_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    tls = write_certs(tmp_path, ["worker"])["worker"]
    monkeypatch.setenv("HELIOS_TLS_CA", str(tls.ca))
    monkeypatch.setenv("HELIOS_WORKER_TLS_CERT", str(tls.cert))
    monkeypatch.setenv("HELIOS_WORKER_TLS_KEY", str(tls.key))
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, "worker")
    assert settings_from_args(parser.parse_args([]), "worker").tls == tls
    await asyncio.sleep(0)
