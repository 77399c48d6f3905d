"""Model ids through the REAL registry (in-process RegistryService on a real gRPC port),
and local directories confined to the configured model roots."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf.struct_pb2 import Struct
from helios.v1 import estimator_pb2 as pb
from helios.v1 import estimator_pb2_grpc, registry_pb2_grpc
from support.fakes import serve

from estimator.models import ModelResolver
from estimator.registry_client import GrpcRegistryConfigs
from estimator.servicer import EstimatorServicer
from registry.core import Registry
from registry.servicer import RegistryServicer

CONFIGS = Path(__file__).parent / "configs"
Stub = estimator_pb2_grpc.EstimatorServiceStub


def write_model(directory: Path, **changes: object) -> Path:
    directory.mkdir(parents=True)
    config = {**json.loads((CONFIGS / "llama-3-8b.json").read_text()), **changes}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


class CountingRegistry(GrpcRegistryConfigs):
    """The real gRPC client, counting its calls (the cache must save them)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.resolves = 0
        self.configs = 0

    async def resolve(self, reference: str) -> tuple[str, str]:
        self.resolves += 1
        return await super().resolve(reference)

    async def config_json(self, model_id: str, version: str) -> bytes:
        self.configs += 1
        return await super().config_json(model_id, version)


@dataclass
class Setup:
    stub: Stub
    registry: Registry
    client: CountingRegistry
    root: Path
    outside: Path


async def _import(registry: Registry, directory: Path, model_id: str) -> None:
    async for _ in registry.import_directory(directory, model_id):
        pass


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    registry = Registry.open(tmp_path / "registry")
    reg = await serve(
        "RegistryService",
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(registry),
    )
    client = CountingRegistry(reg.address)
    root = tmp_path / "models"
    write_model(root / "org" / "local-llama", num_hidden_layers=2)
    outside = write_model(tmp_path / "secret", num_hidden_layers=3)
    est = await serve(
        "EstimatorService",
        estimator_pb2_grpc.add_EstimatorServiceServicer_to_server,
        EstimatorServicer(models=ModelResolver(client, [root])),
    )
    async with grpc.aio.insecure_channel(est.address) as channel:
        yield Setup(Stub(channel), registry, client, root, outside)
    await est.stop(0)
    await client.close()
    await reg.stop(0)
    registry.close()


async def test_registry_model_id_resolves_and_caches_on_the_version(
    setup: Setup, tmp_path: Path
) -> None:
    await _import(setup.registry, write_model(tmp_path / "src1", num_hidden_layers=4), "Org/Reg")
    first = await setup.stub.GetModelEstimate(pb.GetModelEstimateRequest(model_id="org/reg"))
    assert not first.estimate.cache_hit
    # 4 llama-3-8b layers, not 32: the registry's config is the one used.
    inline = Struct()
    inline.update(json.loads((tmp_path / "src1" / "config.json").read_text()))
    expected = await setup.stub.EstimateMemory(pb.EstimateMemoryRequest(config=inline))
    assert first.estimate.parameter_count == expected.parameter_count
    assert 0 < first.estimate.parameter_count < 2_500_000_000
    again = await setup.stub.GetModelEstimate(pb.GetModelEstimateRequest(model_id="org/reg"))
    assert again.estimate.cache_hit
    assert setup.client.configs == 1  # config fetched once per version
    assert setup.client.resolves == 1  # resolution remembered (its own short TTL)

    # A new version behind "latest" is a different cache key once the resolution expires.
    await _import(setup.registry, write_model(tmp_path / "src2", num_hidden_layers=8), "org/reg")
    resolver = ModelResolver(setup.client)
    source = await resolver.source("org/reg")
    assert source.key.startswith("reg:org/reg@")
    assert source.load()["num_hidden_layers"] == 8


async def test_unknown_id_is_not_found_naming_it(setup: Setup) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await setup.stub.GetModelEstimate(pb.GetModelEstimateRequest(model_id="nobody/nothing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody/nothing" in (info.value.details() or "")


async def test_local_directories_only_under_the_roots(setup: Setup) -> None:
    inside = await setup.stub.GetModelEstimate(
        pb.GetModelEstimateRequest(model_id="org/local-llama")
    )
    assert inside.estimate.parameter_count > 0
    absolute = await setup.stub.GetModelEstimate(
        pb.GetModelEstimateRequest(model_id=str(setup.root / "org" / "local-llama"))
    )
    assert absolute.estimate.parameter_count == inside.estimate.parameter_count
    for escaping in (
        str(setup.outside),
        "../secret",
        "org/../../secret",
        str(setup.root / ".." / "secret"),
        "/etc",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await setup.stub.EstimateMemory(pb.EstimateMemoryRequest(model_id=escaping))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, escaping
        assert escaping in (info.value.details() or "")


async def test_registry_down_falls_back_to_roots_then_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root / "here", num_hidden_layers=2)
    client = GrpcRegistryConfigs("127.0.0.1:1", deadline_s=1.0)  # nothing listens there
    resolver = ModelResolver(client, [root])
    try:
        assert (await resolver.source("here")).load()["num_hidden_layers"] == 2
        from runtime.errors import UnavailableError

        with pytest.raises(UnavailableError, match="org/elsewhere"):
            await resolver.source("org/elsewhere")
    finally:
        await client.close()
