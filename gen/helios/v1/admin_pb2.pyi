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
