"""Test helpers for the xDS control plane: a real Envoy fed by an in-process ADS server,
tiny InferenceService workers that answer with their own name, and the fleet to drive.

The bootstrap is minimal on purpose: ADS (CDS wildcard, RDS ``helios``) from a static
cluster ``helios_xds`` at the in-process server, one listener whose HTTP connection
manager takes its routes from RDS and runs only the router, and a static cluster
``proxy`` that the base routes send everything else to (a third fake server).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from helios.v1 import inference_pb2, inference_pb2_grpc
from support.fakes import serve

from cli.envoy import EnvoyProcess, _http_get
from proxy.fleet import AgentState, ModelOnAgent, WorkerPool, WorkerRole
from proxy.xds_resources import MODEL_HEADER, XdsSettings
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import LbPolicy
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server

XDS_CLUSTER = "helios_xds"
PROXY_CLUSTER = "proxy"
# What the edge would route when no model route matches: everything to the proxy.
BASE_ROUTES: list[dict[str, Any]] = [
    {"match": {"prefix": "/"}, "route": {"cluster": PROXY_CLUSTER, "timeout": "0s"}}
]

_H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _H2,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def ads_bootstrap(xds_port: int, proxy_port: int, node_id: str = "helios-test") -> str:
    """A minimal Envoy bootstrap whose clusters and routes come from ADS at ``xds_port``."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    hcm = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "rds": {"config_source": ads, "route_config_name": "helios"},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    bootstrap = {
        "node": {"id": node_id, "cluster": "helios"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                _static_cluster(XDS_CLUSTER, xds_port),
                _static_cluster(PROXY_CLUSTER, proxy_port),
            ],
            "listeners": [
                {
                    "name": "helios_edge",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
        },
    }
    return json.dumps(bootstrap, indent=2)


class NamedInference(inference_pb2_grpc.InferenceServiceServicer):
    """Answers CreateCompletion with its own name as the completion id."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.unavailable = False  # answer UNAVAILABLE (before any response header)

    async def CreateCompletion(
        self, request: inference_pb2.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CreateCompletionResponse:
        self.calls += 1
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is draining")
        return inference_pb2.CreateCompletionResponse(id=self.name, model=request.params.model)


@dataclass
class FakeWorker:
    name: str
    server: RunningServer
    servicer: NamedInference

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


async def start_named(name: str) -> FakeWorker:
    servicer = NamedInference(name)
    server = await serve(
        "InferenceService", inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer
    )
    return FakeWorker(name, server, servicer)


def refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(pool: WorkerPool, address: str, *models: str, loading: tuple[str, ...] = ()) -> None:
    """A heartbeat from ``address`` (added if new): ``models`` READY, ``loading`` loading."""
    pool.add(address)
    pool.record_heartbeat(
        address,
        worker_id=address,
        healthy=True,
        models=[ModelOnAgent(m, "ready") for m in models]
        + [ModelOnAgent(m, "loading") for m in loading],
        state=AgentState.READY if models else AgentState.LOADING,
        role=WorkerRole.BOTH,
    )


async def start_xds(
    pool: WorkerPool,
    settings: XdsSettings | None = None,
    policy_for: Callable[[str], LbPolicy] | None = None,
) -> tuple[XdsServer, RunningServer]:
    """An XdsServer observing ``pool``, served on its own gRPC server (port 0)."""
    xds = XdsServer(pool, settings or XdsSettings(), policy_for=policy_for)

    def register(server: grpc.aio.Server) -> list[str]:
        return [xds.register(server)]

    running = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
    xds.start()
    return xds, running


class Mesh:
    """Envoy in front of the fakes, with the fleet state that drives it."""

    def __init__(
        self, envoy: EnvoyProcess, xds: XdsServer, pool: WorkerPool, channel: grpc.aio.Channel
    ) -> None:
        self.envoy = envoy
        self.xds = xds
        self.pool = pool
        self.channel = channel
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def who(self, model: str, **headers: str) -> str:
        """Which server answered a CreateCompletion for ``model`` sent through Envoy."""
        metadata = [(MODEL_HEADER, model), *headers.items()]
        request = inference_pb2.CreateCompletionRequest(
            params=inference_pb2.CompletionParams(model=model)
        )
        response = await self.stub.CreateCompletion(request, metadata=metadata, timeout=5)
        return str(response.id)

    async def admin(self, path: str) -> str:
        status, body = await _http_get(self.envoy.admin_host, self.envoy.admin_port, path)
        assert status == 200, (path, status, body[:200])
        return body.decode()

    async def counter(self, name: str) -> int:
        stats = json.loads(await self.admin(f"/stats?format=json&filter=^{name}$"))
        values = [s.get("value", 0) for s in stats.get("stats", []) if s.get("name") == name]
        return int(values[0]) if values else 0


async def until(
    check: Callable[[], Awaitable[bool]], within: float = 5.0, every: float = 0.005
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took (AssertionError on
    timeout)."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not true after {within}s")
        await asyncio.sleep(every)


async def start_envoy(workdir: Path, xds_port: int, proxy_port: int) -> EnvoyProcess:
    return await EnvoyProcess.start(
        ads_bootstrap(xds_port, proxy_port), workdir, ready_timeout=30.0, concurrency=1
    )


def write_base_routes(path: Path) -> Path:
    path.write_text(json.dumps(BASE_ROUTES), encoding="utf-8")
    return path
