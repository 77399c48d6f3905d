"""EstimatorService servicer: protobuf <-> domain, nothing else."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import grpc
from google.protobuf import json_format
from helios.v1 import estimator_pb2 as pb
from helios.v1 import estimator_pb2_grpc

from estimator.cache import TtlCache
from estimator.estimate_params import EstimateParams
from estimator.gpus import CATALOG, find_gpu
from estimator.memory import Estimate, MemoryParts
from estimator.models import ConfigSource, ModelResolver
from estimator.planning import Recommendation, Recommendations, Suggestion
from estimator.service import MemoryEstimator
from runtime.errors import HeliosError, InvalidArgumentError

__all__ = ["MAX_BATCH_REQUESTS", "EstimatorServicer"]

MAX_BATCH_REQUESTS = 10_000


def params_from_pb(request: pb.EstimateMemoryRequest) -> EstimateParams:
    """The domain parameters of a request (validated later, against the model)."""
    return EstimateParams(
        dtype=request.dtype,
        kv_cache_dtype=request.kv_cache_dtype,
        batch_size=request.batch_size,
        max_seq_len=request.max_seq_len,
        mode=request.mode,
        tensor_parallel_size=request.tensor_parallel_size,
        pipeline_parallel_size=request.pipeline_parallel_size,
        expert_parallel_size=request.expert_parallel_size,
        quant_group_size=request.quant_group_size,
        gpu=request.gpu,
        gpu_memory_utilization=request.gpu_memory_utilization,
        prefill_chunk_tokens=request.prefill_chunk_tokens,
        optimizer=request.optimizer,
        lora_rank=request.lora_rank,
        lora_target_modules=tuple(request.lora_target_modules),
        activation_checkpointing=request.activation_checkpointing,
        zero_stage=request.zero_stage,
        num_gpus=request.num_gpus,
    )


async def source_from_pb(request: pb.EstimateMemoryRequest, models: ModelResolver) -> ConfigSource:
    """The config of a request: inline (keyed on its wire bytes, so a cached answer needs
    no conversion at all) or the model id's (registry, then the model roots)."""
    if request.HasField("config"):
        struct = request.config
        data = struct.SerializeToString(deterministic=True)
        key = "pb:" + hashlib.blake2b(data, digest_size=16).hexdigest()
        return ConfigSource(key=key, load=lambda: json_format.MessageToDict(struct))
    if not request.model_id:
        raise InvalidArgumentError("config: give the model's config.json inline, or a model_id")
    return await models.source(request.model_id)


def breakdown_to_pb(parts: MemoryParts, estimate: Estimate) -> pb.MemoryBreakdown:
    return pb.MemoryBreakdown(
        parameter_count=estimate.parameter_count,
        weights_bytes=parts.weights,
        kv_cache_bytes_per_token=estimate.kv_cache_bytes_per_token,
        kv_cache_bytes=parts.kv_cache,
        activation_bytes=parts.activations,
        overhead_bytes=parts.overhead,
        optimizer_bytes=parts.optimizer,
        gradient_bytes=parts.gradients,
        total_bytes=parts.total,
    )


def estimate_to_pb(estimate: Estimate, cache_hit: bool) -> pb.EstimateMemoryResponse:
    p = estimate.params
    response = pb.EstimateMemoryResponse(
        breakdown=breakdown_to_pb(estimate.model, estimate),
        confidence=estimate.confidence,
        cache_hit=cache_hit,
        parameter_count=estimate.parameter_count,
        weights_bytes=estimate.model.weights,
        kv_cache_bytes_per_token=estimate.kv_cache_bytes_per_token,
        kv_cache_bytes=estimate.model.kv_cache,
        total_bytes=estimate.model.total,
        per_gpu=breakdown_to_pb(estimate.per_gpu, estimate),
        gpu_count=estimate.gpu_count,
        model_type=estimate.model_type,
        active_parameter_count=estimate.active_parameter_count,
        trainable_parameter_count=estimate.trainable_parameter_count,
        notes=estimate.notes,
        dtype=p.dtype,
        kv_cache_dtype=p.kv_cache_dtype,
        max_seq_len=p.max_seq_len,
        batch_size=p.batch_size,
        mode=p.mode,
    )
    fit = estimate.fit
    if fit is not None:
        response.fit.CopyFrom(
            pb.GpuFit(
                gpu=fit.gpu,
                memory_bytes=fit.memory_bytes,
                usable_bytes=fit.usable_bytes,
                required_bytes=fit.required_bytes,
                fits=fit.fits,
                headroom_bytes=fit.headroom_bytes,
                kv_cache_available_bytes=fit.kv.available_bytes,
                kv_cache_blocks=fit.kv.blocks,
                kv_cache_tokens=fit.kv.tokens,
                max_concurrent_sequences=fit.kv.max_concurrent_sequences,
            )
        )
    return response


def recommendation_to_pb(r: Recommendation) -> pb.GpuRecommendation:
    return pb.GpuRecommendation(
        gpu=r.gpu,
        count=r.count,
        headroom_bytes=r.headroom_bytes,
        memory_bytes=r.memory_bytes,
        required_bytes=r.required_bytes,
        tensor_parallel_size=r.tensor_parallel_size,
        pipeline_parallel_size=r.pipeline_parallel_size,
        price_per_hour=r.price_per_hour,
        kv_cache_tokens=r.kv_cache_tokens,
        max_concurrent_sequences=r.max_concurrent_sequences,
    )


def suggestion_to_pb(s: Suggestion) -> pb.MemorySuggestion:
    p = s.params
    return pb.MemorySuggestion(
        change=s.change,
        required_bytes=s.required_bytes,
        fits=s.fits,
        dtype=p.dtype,
        kv_cache_dtype=p.kv_cache_dtype,
        tensor_parallel_size=p.tensor_parallel_size,
        max_seq_len=p.max_seq_len,
        batch_size=p.batch_size,
        mode=p.mode,
    )


def _placement_params(
    request: pb.GetGpuRecommendationsRequest | pb.GetGpuCompatibilityRequest,
) -> EstimateParams:
    return EstimateParams(
        dtype=request.dtype,
        kv_cache_dtype=request.kv_cache_dtype,
        batch_size=request.batch_size,
        max_seq_len=request.max_seq_len,
        gpu_memory_utilization=request.gpu_memory_utilization,
    )


class EstimatorServicer(estimator_pb2_grpc.EstimatorServiceServicer):
    """Serves memory estimates from a :class:`MemoryEstimator`."""

    def __init__(
        self, estimator: MemoryEstimator | None = None, models: ModelResolver | None = None
    ) -> None:
        self.estimator = estimator or MemoryEstimator()
        # Model ids: the registry and the model roots it was given (none: inline only).
        self.models = models or ModelResolver()
        # The answers as messages, so that a hit skips the conversion too. Same TTL and
        # keys as the domain cache; a hit there is a hit here unless this one evicted it.
        domain = self.estimator.estimates
        self._responses: TtlCache[tuple[str, tuple[object, ...]], pb.EstimateMemoryResponse] = (
            TtlCache(domain.ttl_seconds, domain.max_entries, domain.clock)
        )

    async def _estimate(self, request: pb.EstimateMemoryRequest) -> pb.EstimateMemoryResponse:
        source, params = await source_from_pb(request, self.models), params_from_pb(request)
        key = (source.key, params.key())
        cached = self._responses.get(key)
        if cached is not None:
            self.estimator.estimates.hits += 1
            return cached
        estimate, hit = self.estimator.estimate(source, params)
        response = estimate_to_pb(estimate, hit)
        stored = pb.EstimateMemoryResponse()
        stored.CopyFrom(response)
        stored.cache_hit = True
        self._responses.put(key, stored)
        return response

    async def EstimateMemory(
        self, request: pb.EstimateMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateMemoryResponse:
        return await self._estimate(request)

    async def GetModelEstimate(
        self, request: pb.GetModelEstimateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelEstimateResponse:
        source = await self.models.source(request.model_id)
        estimate, hit = self.estimator.estimate(source, EstimateParams())
        return pb.GetModelEstimateResponse(estimate=estimate_to_pb(estimate, hit))

    async def BatchEstimate(
        self, request: pb.BatchEstimateRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchEstimateResponse:
        if len(request.requests) > MAX_BATCH_REQUESTS:
            raise InvalidArgumentError(
                f"requests: at most {MAX_BATCH_REQUESTS} per batch, got {len(request.requests)}"
            )
        response = pb.BatchEstimateResponse()
        estimates = response.estimates
        for i, item in enumerate(request.requests):
            try:
                estimates.append(await self._estimate(item))
            except HeliosError as exc:
                # Same class (same status), with the item's index in front of the field.
                raise type(exc)(f"requests[{i}].{exc.message}") from None
        return response

    async def GetGpuRecommendations(
        self, request: pb.GetGpuRecommendationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetGpuRecommendationsResponse:
        params = _placement_params(request)
        sources = [(await self.models.source(model_id), params) for model_id in request.model_ids]
        recs = self.estimator.recommend(sources)
        return pb.GetGpuRecommendationsResponse(
            recommendations=[recommendation_to_pb(r) for r in recs.items], reason=recs.reason
        )

    async def GetGpuCompatibility(
        self, request: pb.GetGpuCompatibilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetGpuCompatibilityResponse:
        recs: Recommendations = self.estimator.compatibility(
            await self.models.source(request.model_id), _placement_params(request)
        )
        fitting = {r.gpu for r in recs.items}
        return pb.GetGpuCompatibilityResponse(
            compatible=[recommendation_to_pb(r) for r in recs.items],
            incompatible=[g.name for g in CATALOG if g.name not in fitting],
            reason=recs.reason,
        )

    async def OptimizeMemory(
        self, request: pb.OptimizeMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.OptimizeMemoryResponse:
        if not request.HasField("request"):
            raise InvalidArgumentError("request: the configuration to fit is required")
        params = params_from_pb(request.request)
        target = request.target_bytes
        if request.gpu and not params.gpu:  # its family sets the overhead
            params = replace(params, gpu=request.gpu)
        if target == 0 and request.gpu:
            gpu = find_gpu(request.gpu, "gpu")
            util = params.gpu_memory_utilization or 0.9
            target = int(gpu.memory_bytes * util)
        if target <= 0:
            raise InvalidArgumentError(
                f"target_bytes: must be > 0 (or name a gpu), got {request.target_bytes}"
            )
        suggestions = self.estimator.optimize(
            await source_from_pb(request.request, self.models), params, target
        )
        return pb.OptimizeMemoryResponse(
            suggestions=[s.change for s in suggestions],
            details=[suggestion_to_pb(s) for s in suggestions],
            target_bytes=target,
        )
