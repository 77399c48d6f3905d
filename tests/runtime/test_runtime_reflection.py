"""Server reflection v1 and v1alpha, every method describable (runtime/reflection.py)."""

from __future__ import annotations

import asyncio

import grpc
from runtime_echo import SERVICE
from support.reflection_client import describe_all, list_services_v1

from runtime.server import RunningServer

# The echo service is served by a generic handler, with no descriptor to describe.
NO_DESCRIPTOR = frozenset({SERVICE})


async def test_v1_and_v1alpha_list_the_same_services(server: RunningServer) -> None:
    def v1() -> list[str]:
        with grpc.insecure_channel(server.address) as channel:
            return list_services_v1(channel)

    over_v1 = await asyncio.to_thread(v1)
    described = await asyncio.to_thread(describe_all, server.address, NO_DESCRIPTOR)
    assert sorted(over_v1) == sorted(described.services)
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(over_v1)


async def test_every_method_is_described_with_its_types(server: RunningServer) -> None:
    described = await asyncio.to_thread(describe_all, server.address, NO_DESCRIPTOR)
    v1_info = described.methods["grpc.reflection.v1.ServerReflection.ServerReflectionInfo"]
    assert v1_info == (
        "grpc.reflection.v1.ServerReflectionRequest",
        "grpc.reflection.v1.ServerReflectionResponse",
    )
    assert "grpc.health.v1.Health.Check" in described.methods
    # grpcurl's `describe pkg.Service.Method` asks for the method's own symbol.
    assert set(described.method_files.values()) == {"ok"}, described.method_files
