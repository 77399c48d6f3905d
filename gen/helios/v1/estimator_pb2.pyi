from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EstimateMemoryRequest(_message.Message):
    __slots__ = ("model_id", "config", "dtype", "kv_cache_dtype", "batch_size", "max_seq_len", "mode", "tensor_parallel_size", "pipeline_parallel_size")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    config: _struct_pb2.Struct
    dtype: str
    kv_cache_dtype: str
    batch_size: int
    max_seq_len: int
    mode: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    def __init__(self, model_id: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dtype: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., mode: _Optional[str] = ..., tensor_parallel_size: _Optional[int] = ..., pipeline_parallel_size: _Optional[int] = ...) -> None: ...

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

class EstimateMemoryResponse(_message.Message):
    __slots__ = ("breakdown", "confidence", "cache_hit")
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    breakdown: MemoryBreakdown
    confidence: str
    cache_hit: bool
    def __init__(self, breakdown: _Optional[_Union[MemoryBreakdown, _Mapping]] = ..., confidence: _Optional[str] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("model_ids",)
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GpuRecommendation(_message.Message):
    __slots__ = ("gpu", "count", "headroom_bytes")
    GPU_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    gpu: str
    count: int
    headroom_bytes: int
    def __init__(self, gpu: _Optional[str] = ..., count: _Optional[int] = ..., headroom_bytes: _Optional[int] = ...) -> None: ...

class GetGpuRecommendationsResponse(_message.Message):
    __slots__ = ("recommendations",)
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    recommendations: _containers.RepeatedCompositeFieldContainer[GpuRecommendation]
    def __init__(self, recommendations: _Optional[_Iterable[_Union[GpuRecommendation, _Mapping]]] = ...) -> None: ...

class GetGpuCompatibilityRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetGpuCompatibilityResponse(_message.Message):
    __slots__ = ("compatible",)
    COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    compatible: _containers.RepeatedCompositeFieldContainer[GpuRecommendation]
    def __init__(self, compatible: _Optional[_Iterable[_Union[GpuRecommendation, _Mapping]]] = ...) -> None: ...

class OptimizeMemoryRequest(_message.Message):
    __slots__ = ("request", "target_bytes")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    request: EstimateMemoryRequest
    target_bytes: int
    def __init__(self, request: _Optional[_Union[EstimateMemoryRequest, _Mapping]] = ..., target_bytes: _Optional[int] = ...) -> None: ...

class OptimizeMemoryResponse(_message.Message):
    __slots__ = ("suggestions",)
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, suggestions: _Optional[_Iterable[str]] = ...) -> None: ...
