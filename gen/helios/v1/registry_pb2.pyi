from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersion(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ResolveModelRequest(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    def __init__(self, reference: _Optional[str] = ...) -> None: ...

class ResolveModelResponse(_message.Message):
    __slots__ = ("version", "total_bytes", "base")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    total_bytes: int
    base: str
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., total_bytes: _Optional[int] = ..., base: _Optional[str] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ManifestFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256", "chunk_size_bytes", "chunk_sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    chunk_size_bytes: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., chunk_size_bytes: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("version", "files", "total_bytes", "source")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    files: _containers.RepeatedCompositeFieldContainer[ManifestFile]
    total_bytes: int
    source: str
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., files: _Optional[_Iterable[_Union[ManifestFile, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

class RegistryServiceListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RegistryServiceListModelsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token", "total_bytes", "bases")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    total_bytes: _containers.RepeatedScalarFieldContainer[int]
    bases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_bytes: _Optional[_Iterable[int]] = ..., bases: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("source", "model_id", "allow_patterns", "deny_patterns", "set_latest", "base")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    DENY_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    SET_LATEST_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    source: str
    model_id: str
    allow_patterns: _containers.RepeatedScalarFieldContainer[str]
    deny_patterns: _containers.RepeatedScalarFieldContainer[str]
    set_latest: bool
    base: str
    def __init__(self, source: _Optional[str] = ..., model_id: _Optional[str] = ..., allow_patterns: _Optional[_Iterable[str]] = ..., deny_patterns: _Optional[_Iterable[str]] = ..., set_latest: _Optional[bool] = ..., base: _Optional[str] = ...) -> None: ...

class ImportModelResponse(_message.Message):
    __slots__ = ("file", "bytes_done", "bytes_total", "version", "files_done", "files_total", "file_bytes_done", "file_bytes_total", "reused_bytes", "base")
    FILE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REUSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    file: str
    bytes_done: int
    bytes_total: int
    version: ModelVersion
    files_done: int
    files_total: int
    file_bytes_done: int
    file_bytes_total: int
    reused_bytes: int
    base: str
    def __init__(self, file: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., file_bytes_done: _Optional[int] = ..., file_bytes_total: _Optional[int] = ..., reused_bytes: _Optional[int] = ..., base: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadModelHeader
    chunk: UploadModelChunk
    def __init__(self, header: _Optional[_Union[UploadModelHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadModelChunk, _Mapping]] = ...) -> None: ...

class UploadModelHeader(_message.Message):
    __slots__ = ("model_id", "set_latest", "files", "base")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SET_LATEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    set_latest: bool
    files: _containers.RepeatedCompositeFieldContainer[UploadModelFile]
    base: str
    def __init__(self, model_id: _Optional[str] = ..., set_latest: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[UploadModelFile, _Mapping]]] = ..., base: _Optional[str] = ...) -> None: ...

class UploadModelFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadModelChunk(_message.Message):
    __slots__ = ("path", "offset", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("version", "total_bytes", "reused_bytes", "base")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REUSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    total_bytes: int
    reused_bytes: int
    base: str
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., total_bytes: _Optional[int] = ..., reused_bytes: _Optional[int] = ..., base: _Optional[str] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("alias", "version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    version: ModelVersion
    def __init__(self, alias: _Optional[str] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("previous",)
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    previous: ModelVersion
    def __init__(self, previous: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class DeleteVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class DeleteVersionResponse(_message.Message):
    __slots__ = ("freed_bytes",)
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    freed_bytes: int
    def __init__(self, freed_bytes: _Optional[int] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("model_id", "requests", "tokens")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    requests: int
    tokens: int
    def __init__(self, model_id: _Optional[str] = ..., requests: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class SetModelPolicyRequest(_message.Message):
    __slots__ = ("model_id", "priority", "pinned")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    priority: int
    pinned: bool
    def __init__(self, model_id: _Optional[str] = ..., priority: _Optional[int] = ..., pinned: _Optional[bool] = ...) -> None: ...

class SetModelPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPrefetchHintsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class PrefetchHint(_message.Message):
    __slots__ = ("model_id", "score", "version", "size_bytes", "predicted_requests_per_hour")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_REQUESTS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    score: float
    version: ModelVersion
    size_bytes: int
    predicted_requests_per_hour: float
    def __init__(self, model_id: _Optional[str] = ..., score: _Optional[float] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., size_bytes: _Optional[int] = ..., predicted_requests_per_hour: _Optional[float] = ...) -> None: ...

class GetPrefetchHintsResponse(_message.Message):
    __slots__ = ("hints",)
    HINTS_FIELD_NUMBER: _ClassVar[int]
    hints: _containers.RepeatedCompositeFieldContainer[PrefetchHint]
    def __init__(self, hints: _Optional[_Iterable[_Union[PrefetchHint, _Mapping]]] = ...) -> None: ...

class GetEvictionCandidatesRequest(_message.Message):
    __slots__ = ("bytes_needed", "loaded_model_ids")
    BYTES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    bytes_needed: int
    loaded_model_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bytes_needed: _Optional[int] = ..., loaded_model_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EvictionCandidate(_message.Message):
    __slots__ = ("model_id", "size_bytes", "score", "priority")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size_bytes: int
    score: float
    priority: int
    def __init__(self, model_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., score: _Optional[float] = ..., priority: _Optional[int] = ...) -> None: ...

class GetEvictionCandidatesResponse(_message.Message):
    __slots__ = ("model_ids", "candidates", "bytes_freed")
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[EvictionCandidate]
    bytes_freed: int
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[EvictionCandidate, _Mapping]]] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("sha256", "offset", "length")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    length: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadBlobResponse(_message.Message):
    __slots__ = ("data", "offset", "size_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    size_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...
