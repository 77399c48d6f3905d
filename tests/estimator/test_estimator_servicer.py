"""EstimatorService over real gRPC: an in-process server on port 0."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from helios.v1 import estimator_pb2 as pb
from helios.v1 import estimator_pb2_grpc

from estimator.models import ModelResolver
from estimator.servicer import EstimatorServicer
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server

CONFIGS = Path(__file__).parent / "configs"
Stub = estimator_pb2_grpc.EstimatorServiceStub


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config


def struct(config: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(config)
    return s


@pytest_asyncio.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    # Model directories may be named only under the configured roots: tmp_path here.
    servicer = EstimatorServicer(models=ModelResolver(roots=[tmp_path]))

    def register(server: grpc.aio.Server) -> list[str]:
        estimator_pb2_grpc.add_EstimatorServiceServicer_to_server(servicer, server)
        return ["helios.v1.EstimatorService"]

    running: RunningServer = await start_server(
        ServerSettings(service="estimator", metrics_port=-1), register
    )
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Stub(channel)
    await running.stop(0)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "llama"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(load("llama-3-8b")))
    return path


async def test_rest_shape_fields_at_top_level(stub: Stub) -> None:
    """The body outside tests send: {"config", "dtype", "batch_size", "max_seq_len", "mode"}."""
    body = {
        "config": load("llama-3-8b"),
        "dtype": "bf16",
        "batch_size": 1,
        "max_seq_len": 4096,
        "mode": "inference",
    }
    request = json_format.ParseDict(body, pb.EstimateMemoryRequest())
    response = await stub.EstimateMemory(request)
    as_json = json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert int(as_json["parameter_count"]) == 8_030_261_248
    assert int(as_json["weights_bytes"]) == 2 * 8_030_261_248
    assert int(as_json["kv_cache_bytes_per_token"]) == 2 * 32 * 8 * 128 * 2
    assert int(as_json["kv_cache_bytes"]) == 4096 * 131072
    b = response.breakdown
    assert (
        response.total_bytes
        == b.total_bytes
        == (b.weights_bytes + b.kv_cache_bytes + b.activation_bytes + b.overhead_bytes)
    )
    assert response.confidence == "exact"
    assert not response.cache_hit
    assert (await stub.EstimateMemory(request)).cache_hit


async def test_model_directory_and_default_profile(stub: Stub, model_dir: Path) -> None:
    response = await stub.EstimateMemory(
        pb.EstimateMemoryRequest(model_id=str(model_dir), max_seq_len=1024, gpu="T4")
    )
    assert response.parameter_count == 8_030_261_248
    assert response.HasField("fit") and not response.fit.fits  # 16 GB of weights
    profile = await stub.GetModelEstimate(pb.GetModelEstimateRequest(model_id=str(model_dir)))
    assert profile.estimate.max_seq_len == 8192  # the model's max_position_embeddings
    assert profile.estimate.dtype == "bf16"


async def test_unknown_model_id_is_not_found_and_says_why(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EstimateMemory(pb.EstimateMemoryRequest(model_id="meta-llama/Llama-3-8B"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "registry" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"dtype": "fp7"}, "dtype"),
        ({"batch_size": -2}, "batch_size"),
        ({"max_seq_len": -1}, "max_seq_len"),
        ({"batch_size": 1_000_000, "max_seq_len": 16_000_000}, "batch_size x max_seq_len"),
        ({"config_change": {"hidden_size": -1}}, "config.hidden_size"),
        ({"config_change": {"num_attention_heads": "many"}}, "config.num_attention_heads"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, request_fields: dict[str, Any], field: str
) -> None:
    config = {**load("llama-3-8b"), **request_fields.pop("config_change", {})}
    request = pb.EstimateMemoryRequest(config=struct(config), **request_fields)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EstimateMemory(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field + ":")


async def test_missing_config_and_model(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EstimateMemory(pb.EstimateMemoryRequest(dtype="bf16"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in (info.value.details() or "")


async def test_batch_estimate_in_order_and_errors_carry_the_index(stub: Stub) -> None:
    requests = [
        pb.EstimateMemoryRequest(config=struct(load(name)), max_seq_len=2048)
        for name in ("gpt2", "llama-3-8b", "deepseek-v3")
    ]
    response = await stub.BatchEstimate(pb.BatchEstimateRequest(requests=requests))
    assert [e.model_type for e in response.estimates] == ["gpt2", "llama", "deepseek_v3"]
    requests.append(pb.EstimateMemoryRequest(config=struct(load("gpt2")), dtype="fp3"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.BatchEstimate(pb.BatchEstimateRequest(requests=requests))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("requests[3].dtype:")


async def test_recommendations_and_compatibility(stub: Stub, model_dir: Path) -> None:
    recs = await stub.GetGpuRecommendations(
        pb.GetGpuRecommendationsRequest(model_ids=[str(model_dir)], max_seq_len=4096)
    )
    prices = [r.price_per_hour for r in recs.recommendations]
    assert prices and prices == sorted(prices)
    assert all(r.headroom_bytes >= 0 for r in recs.recommendations)
    compat = await stub.GetGpuCompatibility(
        pb.GetGpuCompatibilityRequest(model_id=str(model_dir), max_seq_len=4096)
    )
    gpus = [r.gpu for r in compat.compatible]
    assert len(gpus) == len(set(gpus))  # one (the smallest) layout per GPU type
    assert "H100-80GB" in gpus
    assert "A100-40GB:MIG-1g.5gb" in compat.incompatible


async def test_a_model_that_fits_nowhere_is_a_clear_answer(stub: Stub, tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.mkdir()
    huge = {
        **load("llama-3-8b"),
        "num_hidden_layers": 4000,
        "hidden_size": 65536,
        "intermediate_size": 262144,
        "num_attention_heads": 512,
        "num_key_value_heads": 512,
    }
    (path / "config.json").write_text(json.dumps(huge))
    recs = await stub.GetGpuRecommendations(
        pb.GetGpuRecommendationsRequest(model_ids=[str(path)], max_seq_len=1024)
    )
    assert list(recs.recommendations) == []
    assert "fits nowhere" in recs.reason


async def test_optimize(stub: Stub) -> None:
    request = pb.EstimateMemoryRequest(
        config=struct(load("llama-3-8b")), max_seq_len=8192, batch_size=16
    )
    response = await stub.OptimizeMemory(pb.OptimizeMemoryRequest(request=request, gpu="L4"))
    assert response.suggestions
    assert response.details[0].fits
    assert response.target_bytes == int(23034 * 2**20 * 0.9)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.OptimizeMemory(pb.OptimizeMemoryRequest(request=request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
