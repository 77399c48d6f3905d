from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EstimateMemoryRequest(_message.Message):
    __slots__ = ("model_id", "config", "dtype", "kv_cache_dtype", "batch_size", "max_seq_len", "mode", "tensor_parallel_size", "pipeline_parallel_size", "expert_parallel_size", "quant_group_size", "gpu", "gpu_memory_utilization", "prefill_chunk_tokens", "optimizer", "lora_rank", "lora_target_modules", "activation_checkpointing", "zero_stage", "num_gpus")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPERT_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUANT_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    ZERO_STAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_GPUS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    config: _struct_pb2.Struct
    dtype: str
    kv_cache_dtype: str
    batch_size: int
    max_seq_len: int
    mode: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    expert_parallel_size: int
    quant_group_size: int
    gpu: str
    gpu_memory_utilization: float
    prefill_chunk_tokens: int
    optimizer: str
    lora_rank: int
    lora_target_modules: _containers.RepeatedScalarFieldContainer[str]
    activation_checkpointing: bool
    zero_stage: int
    num_gpus: int
    def __init__(self, model_id: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., mode: _Optional[str] = ..., tensor_parallel_size: _Optional[int] = ..., pipeline_parallel_size: _Optional[int] = ..., expert_parallel_size: _Optional[int] = ..., quant_group_size: _Optional[int] = ..., gpu: _Optional[str] = ..., gpu_memory_utilization: _Optional[float] = ..., prefill_chunk_tokens: _Optional[int] = ..., optimizer: _Optional[str] = ..., lora_rank: _Optional[int] = ..., lora_target_modules: _Optional[_Iterable[str]] = ..., activation_checkpointing: _Optional[bool] = ..., zero_stage: _Optional[int] = ..., num_gpus: _Optional[int] = ...) -> None: ...

class MemoryBreakdown(_message.Message):
    __slots__ = ("parameter_count", "weights_bytes", "kv_cache_bytes_per_token", "kv_cache_bytes", "activation_bytes", "overhead_bytes", "optimizer_bytes", "gradient_bytes", "total_bytes")
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_BYTES_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    parameter_count: int
    weights_bytes: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    optimizer_bytes: int
    gradient_bytes: int
    total_bytes: int
    def __init__(self, parameter_count: _Optional[int] = ..., weights_bytes: _Optional[int] = ..., kv_cache_bytes_per_token: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., activation_bytes: _Optional[int] = ..., overhead_bytes: _Optional[int] = ..., optimizer_bytes: _Optional[int] = ..., gradient_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class GpuFit(_message.Message):
    __slots__ = ("gpu", "memory_bytes", "usable_bytes", "required_bytes", "fits", "headroom_bytes", "kv_cache_available_bytes", "kv_cache_blocks", "kv_cache_tokens", "max_concurrent_sequences")
    GPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    gpu: str
    memory_bytes: int
    usable_bytes: int
    required_bytes: int
    fits: bool
    headroom_bytes: int
    kv_cache_available_bytes: int
    kv_cache_blocks: int
    kv_cache_tokens: int
    max_concurrent_sequences: int
    def __init__(self, gpu: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., usable_bytes: _Optional[int] = ..., required_bytes: _Optional[int] = ..., fits: _Optional[bool] = ..., headroom_bytes: _Optional[int] = ..., kv_cache_available_bytes: _Optional[int] = ..., kv_cache_blocks: _Optional[int] = ..., kv_cache_tokens: _Optional[int] = ..., max_concurrent_sequences: _Optional[int] = ...) -> None: ...

class EstimateMemoryResponse(_message.Message):
    __slots__ = ("breakdown", "confidence", "cache_hit", "parameter_count", "weights_bytes", "kv_cache_bytes_per_token", "kv_cache_bytes", "total_bytes", "per_gpu", "gpu_count", "model_type", "active_parameter_count", "trainable_parameter_count", "fit", "notes", "dtype", "kv_cache_dtype", "max_seq_len", "batch_size", "mode")
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PER_GPU_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    breakdown: MemoryBreakdown
    confidence: str
    cache_hit: bool
    parameter_count: int
    weights_bytes: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int
    total_bytes: int
    per_gpu: MemoryBreakdown
    gpu_count: int
    model_type: str
    active_parameter_count: int
    trainable_parameter_count: int
    fit: GpuFit
    notes: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    kv_cache_dtype: str
    max_seq_len: int
    batch_size: int
    mode: str
    def __init__(self, breakdown: _Optional[_Union[MemoryBreakdown, _Mapping]] = ..., confidence: _Optional[str] = ..., cache_hit: _Optional[bool] = ..., parameter_count: _Optional[int] = ..., weights_bytes: _Optional[int] = ..., kv_cache_bytes_per_token: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., per_gpu: _Optional[_Union[MemoryBreakdown, _Mapping]] = ..., gpu_count: _Optional[int] = ..., model_type: _Optional[str] = ..., active_parameter_count: _Optional[int] = ..., trainable_parameter_count: _Optional[int] = ..., fit: _Optional[_Union[GpuFit, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., max_seq_len: _Optional[int] = ..., batch_size: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class GetModelEstimateRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelEstimateResponse(_message.Message):
    __slots__ = ("estimate",)
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    estimate: EstimateMemoryResponse
    def __init__(self, estimate: _Optional[_Union[EstimateMemoryResponse, _Mapping]] = ...) -> None: ...

class BatchEstimateRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[EstimateMemoryRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[EstimateMemoryRequest, _Mapping]]] = ...) -> None: ...

class BatchEstimateResponse(_message.Message):
    __slots__ = ("estimates",)
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    estimates: _containers.RepeatedCompositeFieldContainer[EstimateMemoryResponse]
    def __init__(self, estimates: _Optional[_Iterable[_Union[EstimateMemoryResponse, _Mapping]]] = ...) -> None: ...

class GetGpuRecommendationsRequest(_message.Message):
    __slots__ = ("model_ids", "dtype", "kv_cache_dtype", "batch_size", "max_seq_len", "gpu_memory_utilization")
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    kv_cache_dtype: str
    batch_size: int
    max_seq_len: int
    gpu_memory_utilization: float
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., gpu_memory_utilization: _Optional[float] = ...) -> None: ...

class GpuRecommendation(_message.Message):
    __slots__ = ("gpu", "count", "headroom_bytes", "memory_bytes", "required_bytes", "tensor_parallel_size", "pipeline_parallel_size", "price_per_hour", "kv_cache_tokens", "max_concurrent_sequences")
    GPU_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    gpu: str
    count: int
    headroom_bytes: int
    memory_bytes: int
    required_bytes: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    price_per_hour: float
    kv_cache_tokens: int
    max_concurrent_sequences: int
    def __init__(self, gpu: _Optional[str] = ..., count: _Optional[int] = ..., headroom_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., required_bytes: _Optional[int] = ..., tensor_parallel_size: _Optional[int] = ..., pipeline_parallel_size: _Optional[int] = ..., price_per_hour: _Optional[float] = ..., kv_cache_tokens: _Optional[int] = ..., max_concurrent_sequences: _Optional[int] = ...) -> None: ...

class GetGpuRecommendationsResponse(_message.Message):
    __slots__ = ("recommendations", "reason")
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    recommendations: _containers.RepeatedCompositeFieldContainer[GpuRecommendation]
    reason: str
    def __init__(self, recommendations: _Optional[_Iterable[_Union[GpuRecommendation, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetGpuCompatibilityRequest(_message.Message):
    __slots__ = ("model_id", "dtype", "kv_cache_dtype", "batch_size", "max_seq_len", "gpu_memory_utilization")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dtype: str
    kv_cache_dtype: str
    batch_size: int
    max_seq_len: int
    gpu_memory_utilization: float
    def __init__(self, model_id: _Optional[str] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., gpu_memory_utilization: _Optional[float] = ...) -> None: ...

class GetGpuCompatibilityResponse(_message.Message):
    __slots__ = ("compatible", "incompatible", "reason")
    COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    INCOMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    compatible: _containers.RepeatedCompositeFieldContainer[GpuRecommendation]
    incompatible: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, compatible: _Optional[_Iterable[_Union[GpuRecommendation, _Mapping]]] = ..., incompatible: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class OptimizeMemoryRequest(_message.Message):
    __slots__ = ("request", "target_bytes", "gpu")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    request: EstimateMemoryRequest
    target_bytes: int
    gpu: str
    def __init__(self, request: _Optional[_Union[EstimateMemoryRequest, _Mapping]] = ..., target_bytes: _Optional[int] = ..., gpu: _Optional[str] = ...) -> None: ...

class MemorySuggestion(_message.Message):
    __slots__ = ("change", "required_bytes", "fits", "dtype", "kv_cache_dtype", "tensor_parallel_size", "max_seq_len", "batch_size", "mode")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    change: str
    required_bytes: int
    fits: bool
    dtype: str
    kv_cache_dtype: str
    tensor_parallel_size: int
    max_seq_len: int
    batch_size: int
    mode: str
    def __init__(self, change: _Optional[str] = ..., required_bytes: _Optional[int] = ..., fits: _Optional[bool] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., tensor_parallel_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., batch_size: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class OptimizeMemoryResponse(_message.Message):
    __slots__ = ("suggestions", "details", "target_bytes")
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    details: _containers.RepeatedCompositeFieldContainer[MemorySuggestion]
    target_bytes: int
    def __init__(self, suggestions: _Optional[_Iterable[str]] = ..., details: _Optional[_Iterable[_Union[MemorySuggestion, _Mapping]]] = ..., target_bytes: _Optional[int] = ...) -> None: ...
