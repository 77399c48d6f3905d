"""Helios' REST edge: Envoy in front of the gRPC mesh, as configuration.

Envoy listens on one port for both worlds:

* OpenAI-style REST (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, the
  estimator and admin APIs) is transcoded to gRPC by ``grpc_json_transcoder`` using a
  descriptor set compiled from ``proto/helios/v1``. A Lua filter (``edge/helios_edge.lua``)
  runs first: it routes ``"stream": true`` bodies to the streaming methods, marks REST
  requests with the edge header and reshapes error bodies into OpenAI's shape.
* Native gRPC (h2c) on any ``/<package.Service>/Method`` path is proxied as is, to the
  upstream mapped for that service or to the default upstream (reflection, health, ...).
* ``/v1/metrics`` is proxied to the metrics upstream's ``/metrics`` (HTTP/1.1).

This package compiles the descriptor set (``descriptors``) and renders the bootstrap
(``bootstrap``: listener and connection manager; ``filters``: the HTTP filter chain;
``lua``: the Lua filter; ``routes``: the virtual host; ``access``: who may call what;
``front_door``: the conventional paths and the status page; ``clusters``; ``tracing``).
Running Envoy is the CLI's (cli/envoy.py); tools/render_k8s_envoy.py renders the
Kubernetes gateway's config from the same code.
"""

from __future__ import annotations

from edge.access import EdgeAccess
from edge.bootstrap import render_envoy_config
from edge.clusters import Upstream, UpstreamTls
from edge.descriptors import build_descriptor_set
from edge.routes import edge_virtual_host, write_edge_routes
from edge.tracing import EdgeTracing, edge_tracing

__all__ = [
    "EdgeAccess",
    "EdgeTracing",
    "Upstream",
    "UpstreamTls",
    "build_descriptor_set",
    "edge_tracing",
    "edge_virtual_host",
    "render_envoy_config",
    "write_edge_routes",
]
