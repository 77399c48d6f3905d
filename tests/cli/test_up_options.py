"""`helios up`'s flags become the mesh's options (cli/up_options.py), a mistake is refused
naming its flag before anything starts, and the mesh hands the options on to the proxy
(cli/mesh_services.py): keys, models outside the registry, the services that serve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cli.main import build_parser
from cli.mesh_services import Mesh
from cli.processes import ServiceProcess
from cli.up_options import MeshOptions, edge_access, mesh_options


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HELIOS_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


def _options(*argv: str) -> MeshOptions:
    return mesh_options(build_parser().parse_args(["up", "--no-embedding-model", *argv]))


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--workers", "0"], "--workers"),
        (["--port", "70000"], "--port"),
        (["--model", "no-path"], "--model"),
        (["--model", "=/tmp"], "--model"),
        (["--model", "m=/tmp", "--api-key", "k:many"], "--api-key"),
        (["--model", "m=/tmp", "--api-key", "k:1:2:3"], "--api-key"),
    ],
)
def test_a_mistake_names_its_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(SystemExit) as refused:
        _options(*argv)
    assert str(refused.value).startswith(flag)


def test_the_flags_become_the_options(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m"
    options = _options(
        *("--model", f"m={tmp_path / 'models' / '..' / 'models' / 'm'}"),
        *("--api-key", "k1:60:1000", "--api-key", "k2", "--admin-key", "adm"),
        *("--engine", "transformers", "--workers", "2", "--port", "0"),
        *("--state-dir", str(tmp_path / "state")),
    )
    assert options.models == (("m", model),)
    assert (options.workers, options.port, options.engine) == (2, 0, "transformers")
    assert (options.api_keys, options.admin_key) == (("k1:60:1000", "k2"), "adm")
    assert options.state_dir == (tmp_path / "state").resolve()
    assert options.tls_dir is None and options.tracing is None


def test_envoy_counts_requests_per_minute_and_the_admin_key_passes() -> None:
    access = edge_access(("k1:60:1000", "k2", "k3:0:5"), "adm")
    assert access.inference_keys == ("k1", "k2", "k3")
    assert access.admin_keys == ("adm",)
    assert access.requests_per_minute == (("k1", 60),)


def _serving(name: str, port: int, state_dir: Path) -> ServiceProcess:
    service = ServiceProcess(name=name, module=f"{name}.server", args=[], state_dir=state_dir)
    service.ready = {"host": "127.0.0.1", "grpc_port": port}
    return service


def test_the_proxy_hears_of_what_serves_and_counts_the_tokens(tmp_path: Path) -> None:
    options = MeshOptions(
        host="127.0.0.1",
        port=0,
        workers=2,
        models=(("m1", tmp_path / "m1"), ("m2", tmp_path / "m2")),
        state_dir=tmp_path,
        ready_file=None,
        api_keys=("k1:60:1000", "k2"),
        admin_key="adm",
    )
    mesh = Mesh(options)
    mesh.registry.ready = {"host": "127.0.0.1", "grpc_port": 7001}  # the estimator is not up
    storaged = _serving("storaged", 7002, tmp_path)
    mesh.storaged = storaged
    mesh.workers = [_serving(f"worker-{i}", 7010 + i, tmp_path) for i in range(2)]
    mesh.imported = {"m1": "helios/m1"}  # m2 is served from its directory

    args = mesh._proxy_args(storaged)

    assert args == [
        *("--worker", "127.0.0.1:7010", "--worker", "127.0.0.1:7011"),
        *("--model", f"m2={tmp_path / 'm2'},min=1"),
        *("--registry", "127.0.0.1:7001", "--storaged", "127.0.0.1:7002"),
        # Envoy counted the requests: the proxy gets the tokens per minute only.
        *("--api-key", "k1::1000", "--api-key", "k2", "--api-key", "adm"),
        *("--edge-routes", str(tmp_path / "edge-routes.json")),
        # Envoy runs here, beside the workers: their REST endpoints' Unix sockets.
        "--xds-local-sockets",
    ]
    assert (tmp_path / "edge-routes.json").is_file()


def test_workers_serve_rest_on_a_socket_of_the_state_dir_unless_tls_or_too_long(
    tmp_path: Path,
) -> None:
    options = MeshOptions(
        host="127.0.0.1",
        port=0,
        workers=1,
        models=(),
        state_dir=tmp_path,
        ready_file=None,
        api_keys=(),
        admin_key="adm",
    )
    socket = tmp_path / "run" / "worker-0.rest.sock"
    assert Mesh(options)._rest_socket_args(0) == ["--rest-socket", str(socket)]
    assert socket.parent.is_dir()  # made for it (the worker binds the socket)
    # Under --tls the sockets would need the certificates too: TCP, as before.
    assert Mesh(dataclasses.replace(options, tls_dir=tmp_path))._rest_socket_args(0) == []
    deep = tmp_path / ("d" * 100)
    assert Mesh(dataclasses.replace(options, state_dir=deep))._rest_socket_args(0) == []
