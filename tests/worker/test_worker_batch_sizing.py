"""Memory-aware engine limits: the rules (domain), then the worker asking a real
estimator server over gRPC and filling a vLLM config, and the worker charging an
engine's planned memory against its capacity."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from helios.v1 import estimator_pb2_grpc
from support.fakes import FakeEngine, serve

from estimator.servicer import EstimatorServicer
from runtime.errors import ResourceExhaustedError
from worker.batch_sizing import (
    CPU_PLANNED_SEQS,
    KV_BLOCK_TOKENS,
    MAX_NUM_SEQS_CAP,
    PLANNING_SEQ_TOKENS,
    ModelMemory,
    derive_limits,
)
from worker.engine.base import EngineClient
from worker.engine.vllm_engine import VllmConfig
from worker.engine_sizing import VllmSizer
from worker.estimator_client import EstimatorClient
from worker.models import ModelManager

MIB = 1024**2
GIB = 1024**3

# 1 KiB of KV cache per token, 32k context.
MEMORY = ModelMemory(
    weights_bytes=100 * MIB,
    activation_bytes=20 * MIB,
    overhead_bytes=30 * MIB,
    kv_bytes_per_token=1024,
    context_tokens=32768,
)


# -- the rules -------------------------------------------------------------------------


def usable(tokens: int) -> int:
    """Tokens vLLM serves from a KV cache of ``tokens``: whole blocks, one kept aside."""
    return (tokens // KV_BLOCK_TOKENS - 1) * KV_BLOCK_TOKENS


def test_the_kv_cache_gets_what_the_budget_leaves() -> None:
    limits = derive_limits("m", MEMORY, 1 * GIB)
    assert limits.kv_cache_bytes == 1 * GIB - 150 * MIB
    assert limits.kv_cache_tokens == usable((1 * GIB - 150 * MIB) // 1024)
    assert limits.footprint_bytes == 1 * GIB
    assert limits.max_model_len == 32768  # the whole context fits
    assert limits.max_num_seqs == min(MAX_NUM_SEQS_CAP, limits.kv_cache_tokens // 1024)


def test_a_long_context_is_shortened_to_what_the_kv_cache_holds() -> None:
    budget = 150 * MIB + (4096 + KV_BLOCK_TOKENS) * 1024  # room for 4096 tokens
    limits = derive_limits("m", MEMORY, budget)
    assert limits.kv_cache_tokens == 4096
    assert limits.max_model_len == 4096
    assert limits.max_num_seqs == 4096 // PLANNING_SEQ_TOKENS


def test_short_models_plan_the_batch_at_their_own_length() -> None:
    short = ModelMemory(10 * MIB, 0, 0, kv_bytes_per_token=100, context_tokens=128)
    limits = derive_limits("m", short, 10 * MIB + 128 * 100 * 6)  # 5 usable blocks
    assert limits.max_model_len == 128
    assert limits.max_num_seqs == 5


def test_the_batch_is_capped_and_never_zero() -> None:
    assert derive_limits("m", MEMORY, 64 * GIB).max_num_seqs == MAX_NUM_SEQS_CAP
    tiny_budget = 150 * MIB + 2 * KV_BLOCK_TOKENS * 1024  # one usable block
    assert derive_limits("m", MEMORY, tiny_budget).max_num_seqs == 1


def test_knobs_the_operator_set_are_kept() -> None:
    limits = derive_limits(
        "m", MEMORY, 1 * GIB, kv_cache_bytes=64 * MIB, max_model_len=2048, max_num_seqs=3
    )
    assert (limits.kv_cache_bytes, limits.max_model_len, limits.max_num_seqs) == (
        64 * MIB,
        2048,
        3,
    )
    assert limits.footprint_bytes == 150 * MIB + 64 * MIB


def test_a_planned_batch_sizes_the_kv_cache_to_its_need() -> None:
    # One sequence of the whole 32k context, 31 of the planning length: far below 64 GiB.
    limits = derive_limits("m", MEMORY, 64 * GIB, planned_seqs=32)
    needed = 32768 + 31 * PLANNING_SEQ_TOKENS
    assert needed <= limits.kv_cache_tokens < needed + 2 * KV_BLOCK_TOKENS
    assert limits.kv_cache_bytes == (limits.kv_cache_tokens + KV_BLOCK_TOKENS) * 1024
    assert limits.max_model_len == 32768 and limits.max_num_seqs == 32
    assert limits.footprint_bytes == 150 * MIB + limits.kv_cache_bytes
    # The operator's max_num_seqs is the plan; a small budget still caps the cache.
    assert derive_limits("m", MEMORY, 64 * GIB, max_num_seqs=4).kv_cache_tokens < 32768 + 4096
    small = derive_limits("m", MEMORY, 150 * MIB + 40000 * 1024, planned_seqs=32)
    assert small.kv_cache_bytes == 40000 * 1024


def test_a_model_that_does_not_fit_is_refused_with_the_figures() -> None:
    with pytest.raises(ResourceExhaustedError, match=r"needs 157286400 bytes.*100 bytes are free"):
        derive_limits("big", MEMORY, 100)
    with pytest.raises(ResourceExhaustedError, match=r"max_model_len 8192 .*room for 3968"):
        derive_limits("m", MEMORY, 150 * MIB + 4096 * 1024, max_model_len=8192)
    with pytest.raises(ResourceExhaustedError, match="no room for a KV cache of 256 tokens"):
        derive_limits("m", MEMORY, 150 * MIB + 200 * 1024)


# -- the worker asking a real estimator --------------------------------------------------

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 512,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
}
# K and V x 2 layers x 2 KV heads x head_dim 32 x 4 bytes (float32).
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 32 * 4


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tiny"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY_CONFIG))
    return path


@pytest_asyncio.fixture
async def estimator() -> AsyncIterator[EstimatorClient]:
    running = await serve(
        "EstimatorService",
        estimator_pb2_grpc.add_EstimatorServiceServicer_to_server,
        EstimatorServicer(),
    )
    client = EstimatorClient(running.address)
    yield client
    await client.close()
    await running.stop(0)


async def test_the_estimate_comes_over_grpc_from_the_config(
    estimator: EstimatorClient, model_dir: Path
) -> None:
    memory = await estimator.model_memory(model_dir, "float32")
    assert memory.kv_bytes_per_token == TINY_KV_BYTES_PER_TOKEN
    assert memory.context_tokens == 2048
    assert memory.weights_bytes > 0 and memory.overhead_bytes > 0


async def test_a_vllm_config_is_sized_to_the_workers_budget(
    estimator: EstimatorClient, model_dir: Path
) -> None:
    memory = await estimator.model_memory(model_dir, "float32")
    fixed = memory.weights_bytes + memory.activation_bytes + memory.overhead_bytes
    budget = fixed + 1000 * TINY_KV_BYTES_PER_TOKEN  # room for 1000 tokens
    sizer = VllmSizer(estimator, budget=lambda model: budget, gpu_free=lambda: None)
    sized = await sizer.size("tiny", model_dir, VllmConfig(dtype="float32"))
    assert sized.kv_cache_memory_bytes == 1000 * TINY_KV_BYTES_PER_TOKEN
    assert sized.max_model_len == usable(1000)  # the 2048-token context does not fit
    assert sized.max_num_seqs == 1
    assert sized.planned_bytes == budget
    # What the operator set stays; the KV cache the CPU flag fixes is not overridden.
    given = VllmConfig(dtype="float32", cpu_kvcache_space_gib=1, max_num_seqs=7)
    sized = await VllmSizer(estimator, budget=lambda model: 4 * GIB, gpu_free=lambda: None).size(
        "tiny", model_dir, given
    )
    assert sized.kv_cache_memory_bytes is None and sized.cpu_kvcache_space_gib == 1
    assert sized.max_num_seqs == 7 and sized.max_model_len == 2048
    # A roomy CPU budget: the KV cache the planned batch needs, not the whole 4 GiB.
    roomy = await VllmSizer(estimator, budget=lambda model: 4 * GIB, gpu_free=lambda: None).size(
        "tiny", model_dir, VllmConfig(dtype="float32")
    )
    assert roomy.max_num_seqs == CPU_PLANNED_SEQS and roomy.max_model_len == 2048
    needed = (2048 + (CPU_PLANNED_SEQS - 1) * 1024) * TINY_KV_BYTES_PER_TOKEN
    assert roomy.kv_cache_memory_bytes is not None
    assert needed <= roomy.kv_cache_memory_bytes <= needed + 2 * 128 * TINY_KV_BYTES_PER_TOKEN
    assert roomy.planned_bytes is not None and roomy.planned_bytes < GIB


async def test_on_a_gpu_the_budget_is_the_free_device_memory(
    estimator: EstimatorClient, model_dir: Path
) -> None:
    sizer = VllmSizer(estimator, budget=lambda model: 1, gpu_free=lambda: 10 * GIB)
    sized = await sizer.size("tiny", model_dir, VllmConfig(dtype="float32"))
    assert sized.planned_bytes == int(10 * GIB * 0.9)


async def test_a_model_too_big_for_the_budget_fails_its_load(
    estimator: EstimatorClient, model_dir: Path
) -> None:
    sizer = VllmSizer(estimator, budget=lambda model: 1000, gpu_free=lambda: None)
    with pytest.raises(ResourceExhaustedError, match="tiny needs"):
        await sizer.size("tiny", model_dir, VllmConfig(dtype="float32"))


async def test_no_estimator_leaves_the_limits_to_vllm(model_dir: Path) -> None:
    unreachable = EstimatorClient("127.0.0.1:1")
    sizer = VllmSizer(unreachable, budget=lambda model: GIB, gpu_free=lambda: None)
    config = VllmConfig(dtype="float32")
    assert await sizer.size("tiny", model_dir, config) is config
    await unreachable.close()


# -- the worker's accounting --------------------------------------------------------------


async def test_the_worker_charges_an_engines_planned_memory(tmp_path: Path) -> None:
    async def factory(name: str, path: Path) -> EngineClient:
        engine = FakeEngine(name)
        engine.memory_bytes = 600  # weights are 100 bytes; the KV cache the rest
        return engine

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\0" * 100)
    manager = ModelManager(factory, engine_kind="fake", capacity_bytes=1000)
    async for _ in manager.load("a", tmp_path / "a"):
        continue
    assert manager.used_bytes == 600
    assert manager.budget_for("b") == 400
    assert manager.budget_for("a") == 1000  # its own memory is its budget on reload
    await manager.shutdown()
