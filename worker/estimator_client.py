"""The worker's view of the estimator service: what a model directory needs in memory.

An edge module (protobuf in, domain numbers out): the model's config.json goes in the
request itself, so the estimator needs no access to this worker's files.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import json_format, struct_pb2
from helios.v1 import estimator_pb2, estimator_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import NotFoundError
from runtime.grpc_errors import error_from_status
from worker.batch_sizing import ModelMemory

# The estimator's precision names for vLLM's --dtype values ("auto": the estimator's own
# default, which follows the checkpoint like vLLM's).
_DTYPES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

ESTIMATE_TIMEOUT_S = 10.0


def _read_config(model_dir: Path) -> struct_pb2.Struct:
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist") from exc
    config = struct_pb2.Struct()
    json_format.ParseDict(data, config)
    return config


class EstimatorClient:
    """EstimateMemory on the estimator at ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = create_channel(address)
        self._stub = estimator_pb2_grpc.EstimatorServiceStub(self._channel)

    async def model_memory(
        self, model_dir: Path, dtype: str, tensor_parallel_size: int = 1
    ) -> ModelMemory:
        """One replica's needs (per GPU of the layout), at one sequence of the model's
        full context; the KV cache is given per token, for the caller to size."""
        config = await asyncio.to_thread(_read_config, model_dir)
        request = estimator_pb2.EstimateMemoryRequest(
            config=config,
            dtype=_DTYPES.get(dtype, ""),
            batch_size=1,
            tensor_parallel_size=tensor_parallel_size,
        )
        try:
            response = await self._stub.EstimateMemory(request, timeout=ESTIMATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            # INTERNAL, UNKNOWN and the like come back as UNAVAILABLE (the estimator
            # failed, not the request): error_from_status maps them so.
            raise error_from_status(
                exc.code(), f"estimator {self.address}: {exc.details() or exc.code().name}"
            ) from exc
        per_gpu = response.per_gpu
        return ModelMemory(
            weights_bytes=per_gpu.weights_bytes,
            activation_bytes=per_gpu.activation_bytes,
            overhead_bytes=per_gpu.overhead_bytes,
            kv_bytes_per_token=per_gpu.kv_cache_bytes_per_token
            or response.kv_cache_bytes_per_token,
            context_tokens=response.max_seq_len,
        )

    async def close(self) -> None:
        await self._channel.close(None)
