"""Fixtures: one real Envoy per module in front of a fake InferenceService and metrics server.

The fake gRPC server and Envoy's control run on an event loop in a background thread, so the
tests themselves are plain synchronous functions (the openai client blocks); native gRPC
calls are run on that same loop with ``edge.run(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from envoy_fakes import ADMIN_KEY, BackgroundLoop, Edge, start_fake_server, start_metrics_server

from cli.envoy import EnvoyProcess
from edge import EdgeAccess, Upstream, build_descriptor_set, render_envoy_config


@pytest.fixture(scope="module")
def descriptor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_descriptor_set(tmp_path_factory.mktemp("descriptor") / "helios.pb")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, descriptor: Path) -> Iterator[Edge]:
    workdir = tmp_path_factory.mktemp("envoy")
    loop = BackgroundLoop()
    metrics = start_metrics_server()
    server = None
    envoy = None
    try:
        server, port, fake = loop.run(start_fake_server())
        config = render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=descriptor,
            # Two cluster names for the one fake: the mapped route and the default route
            # (reflection) are both exercised.
            grpc_upstreams={"helios.v1.InferenceService": Upstream("inference", "127.0.0.1", port)},
            default_grpc_upstream=Upstream("default", "127.0.0.1", port),
            metrics_upstream=Upstream("metrics", "127.0.0.1", metrics.server_address[1]),
            # No inference key (the OpenAI API is open); metrics need the admin key.
            access=EdgeAccess(admin_keys=(ADMIN_KEY,)),
        )
        envoy = loop.run(EnvoyProcess.start(config, workdir, ready_timeout=30.0))
        yield Edge(envoy=envoy, fake=fake, fake_port=port, loop=loop, descriptor=descriptor)
    finally:
        if envoy is not None:
            loop.run(envoy.stop())
        if server is not None:
            loop.run(server.stop(None))
        metrics.shutdown()
        metrics.server_close()
        loop.close()


@pytest.fixture
def client(edge: Edge) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{edge.base_url}/v1", api_key="x", max_retries=0) as c:
        yield c
