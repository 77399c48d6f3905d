from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreloadModelRequest(_message.Message):
    __slots__ = ("model_id", "replicas")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    replicas: int
    def __init__(self, model_id: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class PreloadModelResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetMemoryStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerMemory(_message.Message):
    __slots__ = ("worker_id", "total_bytes", "free_bytes", "models", "address", "state", "healthy", "circuit", "outstanding", "memory_source", "model_states")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    total_bytes: int
    free_bytes: int
    models: _containers.RepeatedScalarFieldContainer[str]
    address: str
    state: str
    healthy: bool
    circuit: str
    outstanding: int
    memory_source: str
    model_states: _containers.RepeatedCompositeFieldContainer[AgentModel]
    def __init__(self, worker_id: _Optional[str] = ..., total_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., healthy: _Optional[bool] = ..., circuit: _Optional[str] = ..., outstanding: _Optional[int] = ..., memory_source: _Optional[str] = ..., model_states: _Optional[_Iterable[_Union[AgentModel, _Mapping]]] = ...) -> None: ...

class AgentModel(_message.Message):
    __slots__ = ("model", "state", "cache_level", "running_requests", "waiting_requests", "kv_cache_usage", "memory_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: str
    cache_level: str
    running_requests: int
    waiting_requests: int
    kv_cache_usage: float
    memory_bytes: int
    def __init__(self, model: _Optional[str] = ..., state: _Optional[str] = ..., cache_level: _Optional[str] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class GetMemoryStatsResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerMemory]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerMemory, _Mapping]]] = ...) -> None: ...

class ScaleModelRequest(_message.Message):
    __slots__ = ("model_id", "replicas", "max_replicas")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    replicas: int
    max_replicas: int
    def __init__(self, model_id: _Optional[str] = ..., replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class ScaleModelResponse(_message.Message):
    __slots__ = ("replicas", "workers")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, replicas: _Optional[int] = ..., workers: _Optional[_Iterable[str]] = ...) -> None: ...

class EvictModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class EvictModelResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHealthResponse(_message.Message):
    __slots__ = ("status", "memory_pressure", "healthy_workers", "total_workers", "dependencies")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PRESSURE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    status: str
    memory_pressure: float
    healthy_workers: int
    total_workers: int
    dependencies: _containers.RepeatedCompositeFieldContainer[DependencyHealth]
    def __init__(self, status: _Optional[str] = ..., memory_pressure: _Optional[float] = ..., healthy_workers: _Optional[int] = ..., total_workers: _Optional[int] = ..., dependencies: _Optional[_Iterable[_Union[DependencyHealth, _Mapping]]] = ...) -> None: ...

class DependencyHealth(_message.Message):
    __slots__ = ("name", "kind", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    state: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status", "version", "models", "workers", "tiers", "tokens_per_second", "time_to_first_token_seconds", "requests_total", "errors", "unix_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerSummary]
    tiers: _containers.RepeatedCompositeFieldContainer[StorageTierStatus]
    tokens_per_second: float
    time_to_first_token_seconds: float
    requests_total: int
    errors: _containers.RepeatedCompositeFieldContainer[RecentError]
    unix_ms: int
    def __init__(self, status: _Optional[str] = ..., version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerSummary, _Mapping]]] = ..., tiers: _Optional[_Iterable[_Union[StorageTierStatus, _Mapping]]] = ..., tokens_per_second: _Optional[float] = ..., time_to_first_token_seconds: _Optional[float] = ..., requests_total: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[RecentError, _Mapping]]] = ..., unix_ms: _Optional[int] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "state", "phase", "ready_replicas", "running_requests", "waiting_requests", "tokens_per_second", "time_to_first_token_seconds", "load_phase_seconds")
    class LoadPhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: str
    phase: str
    ready_replicas: int
    running_requests: int
    waiting_requests: int
    tokens_per_second: float
    time_to_first_token_seconds: float
    load_phase_seconds: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., state: _Optional[str] = ..., phase: _Optional[str] = ..., ready_replicas: _Optional[int] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., time_to_first_token_seconds: _Optional[float] = ..., load_phase_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class WorkerSummary(_message.Message):
    __slots__ = ("worker_id", "state", "healthy", "memory_total_bytes", "memory_free_bytes", "running_requests", "waiting_requests", "kv_cache_usage", "models")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: str
    healthy: bool
    memory_total_bytes: int
    memory_free_bytes: int
    running_requests: int
    waiting_requests: int
    kv_cache_usage: float
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[str] = ..., healthy: _Optional[bool] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class StorageTierStatus(_message.Message):
    __slots__ = ("tier", "used_bytes", "capacity_bytes", "files", "hits")
    TIER_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    used_bytes: int
    capacity_bytes: int
    files: int
    hits: int
    def __init__(self, tier: _Optional[str] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., files: _Optional[int] = ..., hits: _Optional[int] = ...) -> None: ...

class RecentError(_message.Message):
    __slots__ = ("unix_ms", "source", "message")
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    unix_ms: int
    source: str
    message: str
    def __init__(self, unix_ms: _Optional[int] = ..., source: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
