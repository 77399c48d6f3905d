from helios.v1 import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_ABORT: _ClassVar[FinishReason]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_DOWNLOADING: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_DRAINING: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
    MODEL_STATE_ASLEEP: _ClassVar[ModelState]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_IDLE: _ClassVar[WorkerState]
    WORKER_STATE_LOADING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]
    WORKER_STATE_DEGRADED: _ClassVar[WorkerState]

class WorkerRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_ROLE_UNSPECIFIED: _ClassVar[WorkerRole]
    WORKER_ROLE_BOTH: _ClassVar[WorkerRole]
    WORKER_ROLE_PREFILL: _ClassVar[WorkerRole]
    WORKER_ROLE_DECODE: _ClassVar[WorkerRole]

class GuideKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUIDE_KIND_UNSPECIFIED: _ClassVar[GuideKind]
    GUIDE_KIND_JSON_SCHEMA: _ClassVar[GuideKind]
    GUIDE_KIND_JSON_OBJECT: _ClassVar[GuideKind]
    GUIDE_KIND_REGEX: _ClassVar[GuideKind]
    GUIDE_KIND_CHOICE: _ClassVar[GuideKind]
    GUIDE_KIND_GRAMMAR: _ClassVar[GuideKind]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_ABORT: FinishReason
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_DOWNLOADING: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_DRAINING: ModelState
MODEL_STATE_FAILED: ModelState
MODEL_STATE_ASLEEP: ModelState
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_IDLE: WorkerState
WORKER_STATE_LOADING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_DRAINING: WorkerState
WORKER_STATE_DEGRADED: WorkerState
WORKER_ROLE_UNSPECIFIED: WorkerRole
WORKER_ROLE_BOTH: WorkerRole
WORKER_ROLE_PREFILL: WorkerRole
WORKER_ROLE_DECODE: WorkerRole
GUIDE_KIND_UNSPECIFIED: GuideKind
GUIDE_KIND_JSON_SCHEMA: GuideKind
GUIDE_KIND_JSON_OBJECT: GuideKind
GUIDE_KIND_REGEX: GuideKind
GUIDE_KIND_CHOICE: GuideKind
GUIDE_KIND_GRAMMAR: GuideKind

class PromptToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class PromptMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[PromptToolCall]
    tool_call_id: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[PromptToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class ChatPrompt(_message.Message):
    __slots__ = ("messages", "tools_json")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[PromptMessage]
    tools_json: str
    def __init__(self, messages: _Optional[_Iterable[_Union[PromptMessage, _Mapping]]] = ..., tools_json: _Optional[str] = ...) -> None: ...

class Guide(_message.Message):
    __slots__ = ("kind", "spec", "choices")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    kind: GuideKind
    spec: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[GuideKind, str]] = ..., spec: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "min_tokens", "logprobs", "echo", "guide")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    GUIDE_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    min_tokens: int
    logprobs: int
    echo: bool
    guide: Guide
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., min_tokens: _Optional[int] = ..., logprobs: _Optional[int] = ..., echo: _Optional[bool] = ..., guide: _Optional[_Union[Guide, _Mapping]] = ...) -> None: ...

class PromptTokens(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenAlternative(_message.Message):
    __slots__ = ("token", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TokenAlternative]
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TokenAlternative, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "chat", "prompt_tokens", "sampling")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    chat: ChatPrompt
    prompt_tokens: PromptTokens
    sampling: SamplingParams
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[ChatPrompt, _Mapping]] = ..., prompt_tokens: _Optional[_Union[PromptTokens, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "prompt_tokens", "completion_tokens", "finish_reason", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first", "kv_cache_handle", "prefill_worker")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    first: GenerateResponse
    kv_cache_handle: str
    prefill_worker: str
    def __init__(self, first: _Optional[_Union[GenerateResponse, _Mapping]] = ..., kv_cache_handle: _Optional[str] = ..., prefill_worker: _Optional[str] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request", "kv_cache_handle", "prefill_worker", "first_token_id")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    kv_cache_handle: str
    prefill_worker: str
    first_token_id: int
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., kv_cache_handle: _Optional[str] = ..., prefill_worker: _Optional[str] = ..., first_token_id: _Optional[int] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: GenerateResponse
    def __init__(self, step: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class TransferKVCacheRequest(_message.Message):
    __slots__ = ("kv_cache_handle", "model")
    KV_CACHE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    kv_cache_handle: str
    model: str
    def __init__(self, kv_cache_handle: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class TransferKVCacheResponse(_message.Message):
    __slots__ = ("layer", "num_layers", "token_offset", "safetensors")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    num_layers: int
    token_offset: int
    safetensors: bytes
    def __init__(self, layer: _Optional[int] = ..., num_layers: _Optional[int] = ..., token_offset: _Optional[int] = ..., safetensors: _Optional[bytes] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "version", "local_path")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    local_path: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., local_path: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model", "state", "progress", "message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: ModelState
    progress: float
    message: str
    def __init__(self, model: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model", "drain_timeout_seconds", "keep_asleep")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ASLEEP_FIELD_NUMBER: _ClassVar[int]
    model: str
    drain_timeout_seconds: float
    keep_asleep: bool
    def __init__(self, model: _Optional[str] = ..., drain_timeout_seconds: _Optional[float] = ..., keep_asleep: _Optional[bool] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model", "aborted_requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ABORTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    aborted_requests: int
    def __init__(self, model: _Optional[str] = ..., aborted_requests: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("prefill_pools", "adapters")
    PREFILL_POOLS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    prefill_pools: PrefillPools
    adapters: AdapterTable
    def __init__(self, prefill_pools: _Optional[_Union[PrefillPools, _Mapping]] = ..., adapters: _Optional[_Union[AdapterTable, _Mapping]] = ...) -> None: ...

class AdapterTable(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterSpec]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterSpec, _Mapping]]] = ...) -> None: ...

class AdapterSpec(_message.Message):
    __slots__ = ("adapter", "base", "version")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    base: str
    version: str
    def __init__(self, adapter: _Optional[str] = ..., base: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class PrefillPools(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PrefillPool]
    def __init__(self, pools: _Optional[_Iterable[_Union[PrefillPool, _Mapping]]] = ...) -> None: ...

class PrefillPool(_message.Message):
    __slots__ = ("model", "endpoints")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    endpoints: _containers.RepeatedCompositeFieldContainer[PrefillEndpoint]
    def __init__(self, model: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[PrefillEndpoint, _Mapping]]] = ...) -> None: ...

class PrefillEndpoint(_message.Message):
    __slots__ = ("address", "running_requests", "waiting_requests", "kv_cache_usage")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    address: str
    running_requests: int
    waiting_requests: int
    kv_cache_usage: float
    def __init__(self, address: _Optional[str] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("model", "state", "engine", "running_requests", "waiting_requests", "kv_cache_usage", "prefix_cache_hit_rate", "generated_tokens_total", "aborted_requests_total", "error", "requests_total", "prompt_tokens_total", "completion_tokens_total", "last_request_unix_ms", "first_tokens_total", "time_to_first_token_seconds_total", "adapters", "load_phase_seconds")
    class LoadPhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ABORTED_REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_REQUEST_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: ModelState
    engine: str
    running_requests: int
    waiting_requests: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    generated_tokens_total: int
    aborted_requests_total: int
    error: str
    requests_total: int
    prompt_tokens_total: int
    completion_tokens_total: int
    last_request_unix_ms: int
    first_tokens_total: int
    time_to_first_token_seconds_total: float
    adapters: _containers.RepeatedScalarFieldContainer[str]
    load_phase_seconds: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., engine: _Optional[str] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prefix_cache_hit_rate: _Optional[float] = ..., generated_tokens_total: _Optional[int] = ..., aborted_requests_total: _Optional[int] = ..., error: _Optional[str] = ..., requests_total: _Optional[int] = ..., prompt_tokens_total: _Optional[int] = ..., completion_tokens_total: _Optional[int] = ..., last_request_unix_ms: _Optional[int] = ..., first_tokens_total: _Optional[int] = ..., time_to_first_token_seconds_total: _Optional[float] = ..., adapters: _Optional[_Iterable[str]] = ..., load_phase_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StoredModel(_message.Message):
    __slots__ = ("model", "tier")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    model: str
    tier: _storage_pb2.CacheTier
    def __init__(self, model: _Optional[str] = ..., tier: _Optional[_Union[_storage_pb2.CacheTier, str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("worker_id", "state", "models", "memory_total_bytes", "memory_free_bytes", "queue_depth", "memory_source", "role", "stored_models", "key_tokens", "rest_port", "rest_socket")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STORED_MODELS_FIELD_NUMBER: _ClassVar[int]
    KEY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REST_PORT_FIELD_NUMBER: _ClassVar[int]
    REST_SOCKET_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: WorkerState
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    memory_total_bytes: int
    memory_free_bytes: int
    queue_depth: int
    memory_source: str
    role: WorkerRole
    stored_models: _containers.RepeatedCompositeFieldContainer[StoredModel]
    key_tokens: _containers.RepeatedCompositeFieldContainer[KeyTokens]
    rest_port: int
    rest_socket: str
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[WorkerState, str]] = ..., models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., queue_depth: _Optional[int] = ..., memory_source: _Optional[str] = ..., role: _Optional[_Union[WorkerRole, str]] = ..., stored_models: _Optional[_Iterable[_Union[StoredModel, _Mapping]]] = ..., key_tokens: _Optional[_Iterable[_Union[KeyTokens, _Mapping]]] = ..., rest_port: _Optional[int] = ..., rest_socket: _Optional[str] = ...) -> None: ...

class KeyTokens(_message.Message):
    __slots__ = ("key_fingerprint", "tokens_total")
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    key_fingerprint: str
    tokens_total: int
    def __init__(self, key_fingerprint: _Optional[str] = ..., tokens_total: _Optional[int] = ...) -> None: ...
