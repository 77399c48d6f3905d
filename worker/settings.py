"""The worker's settings: its flags and ``HELIOS_WORKER_*`` variables as one typed,
frozen object (bound by runtime/settings.py), and the engine configuration derived
from them."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from runtime.config import ConfigError
from runtime.paths import PathRoots
from runtime.settings import Settings, must_be_directory, setting
from worker.admission import QueueLimits
from worker.compile_mode import COMPILE_CHOICES, resolve_compile_mode
from worker.engine.vllm_engine import VllmConfig
from worker.engine.vllm_lora import VllmLora
from worker.memory import nvml_memory
from worker.servicer import ROLES

DEFAULT_CAPACITY_BYTES = 8 * 1024**3
ENGINE = "engine"  # the engine flags' group in --help


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError("model", f"expected NAME=PATH, got {spec!r}")
    return name, Path(path)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class WorkerSettings(Settings):
    """Everything ``python -m worker.server`` is told (besides the shared server flags)."""

    model: tuple[str, ...] = setting(
        (),
        from_env=False,
        metavar="NAME=PATH",
        check=parse_model_spec,
        help="load this HF-layout model directory at start-up under NAME (repeatable);"
        " LoadModel may name it as local_path too",
    )
    model_root: tuple[Path, ...] = setting(
        (),
        env="model_roots",
        separator=os.pathsep,
        metavar="DIR",
        check=must_be_directory,
        help="a directory LoadModel's local_path may point into (repeatable; env"
        f" HELIOS_WORKER_MODEL_ROOTS, {os.pathsep!r}-separated). Default: none besides the"
        " --model directories; any other local_path is PERMISSION_DENIED",
    )
    worker_id: str = setting(default_factory=_default_worker_id)
    memory_capacity_bytes: int = setting(
        DEFAULT_CAPACITY_BYTES,
        gt=0,
        help="memory this worker offers for weights (no GPU here: the scheduler uses this)",
    )
    max_concurrency: int = setting(
        4,
        ge=1,
        help="requests computed at once per model (reference engine); more wait their turn"
        " in the worker's fair queue (vLLM: --max-num-seqs)",
    )
    max_queued_per_client: int = setting(
        QueueLimits.per_client,
        ge=1,
        help="requests one client (API key; keyless requests are one client) may have waiting"
        " per model for a turn at the engine; more are refused with 429 / RESOURCE_EXHAUSTED",
    )
    max_queued: int = setting(
        QueueLimits.total,
        ge=1,
        help="requests of all clients that may wait per model for a turn at the engine",
    )
    rest_port: int = setting(
        0,
        ge=-1,
        metavar="PORT",
        help="the port of the worker's OpenAI REST endpoint (HTTP/1.1, on --host), where"
        " Envoy sends a warm model's streamed chat and completions (with --tls: mutual TLS,"
        " as on the gRPC port); 0: any free port (heartbeats say which), -1: none (Envoy"
        " then streams them over gRPC)",
    )
    rest_socket: str = setting(
        "",
        metavar="PATH",
        help="also serve the REST endpoint on this Unix socket (owner-only), for an edge"
        " Envoy on this host (`helios up` sets it): no TCP between them; needs --rest-port",
    )
    advertise_address: str = setting(
        "",
        metavar="HOST:PORT",
        help="this worker's address as other workers reach it (returned by Prefill)",
    )
    storaged: str = setting(
        "",
        metavar="HOST:PORT",
        help="storaged address: LoadModel without local_path fetches through EnsureModel",
    )
    estimator: str = setting(
        "",
        metavar="HOST:PORT",
        help="estimator address: a vLLM engine's KV cache, max_model_len and max_num_seqs,"
        " when not given, are sized from its memory estimate and the memory left here",
    )
    role: str = setting(
        "both",
        choices=ROLES,
        help="disaggregated serving: prefill serves Prefill and TransferKVCache only,"
        " decode serves Decode only, both (default) serves every generation RPC",
    )
    kv_shared_path: Path | None = setting(
        None,
        help="vLLM prefill/decode: the directory (shared by the prefill and decode workers)"
        " where vLLM's KV connector saves and loads prompt KV caches",
    )
    # The engine choice and vLLM's knobs.
    engine: str = setting(
        "transformers",
        group=ENGINE,
        choices=("transformers", "vllm"),
        help="transformers: the CPU reference engine; vllm: vLLM's async engine",
    )
    dtype: str = setting(
        "auto", group=ENGINE, help="weights dtype (auto, float32, bfloat16, float16); vLLM engine"
    )
    max_num_seqs: int | None = setting(
        None, group=ENGINE, ge=1, help="sequences batched at once (vLLM); default: vLLM's"
    )
    max_num_batched_tokens: int | None = setting(
        None, group=ENGINE, ge=1, help="tokens per scheduler step (vLLM); default: vLLM's"
    )
    max_model_len: int | None = setting(
        None, group=ENGINE, ge=1, help="context length cap (vLLM); default: the model's"
    )
    gpu_memory_utilization: float | None = setting(
        None,
        group=ENGINE,
        gt=0,
        le=1,
        help="fraction of GPU memory vLLM may use (GPU build)",
    )
    cpu_kvcache_space_gib: float | None = setting(
        None,
        group=ENGINE,
        gt=0,
        help="KV cache size in GiB for the CPU build of vLLM (VLLM_CPU_KVCACHE_SPACE)",
    )
    enable_prefix_caching: bool = setting(
        True, group=ENGINE, negatable=True, help="vLLM's automatic prefix caching"
    )
    quantization: str | None = setting(
        None,
        group=ENGINE,
        help="vLLM quantization method (awq, gptq, fp8, ...); default: none / the model's",
    )
    compile: str = setting(
        "auto",
        group=ENGINE,
        choices=COMPILE_CHOICES,
        help="vLLM's torch.compile: full (compiled, cached under $HELIOS_HOME across starts),"
        " eager (no compilation: the fastest start), auto (full on a GPU, eager on a CPU)",
    )
    load_format: str = setting(
        "helios",
        group=ENGINE,
        help="how vLLM reads weights: helios (safetensors through Helios' zero-copy mapping)"
        " or one of vLLM's load formats (auto, safetensors, fastsafetensors, ...)",
    )
    vllm_processes: str = setting(
        "forkserver",
        group=ENGINE,
        choices=("forkserver", "spawn"),
        help="how vLLM's CPU build starts its engine processes: forkserver (forked from a"
        " process that imported vLLM when the worker started: seconds) or spawn (vLLM's"
        " own: a fresh interpreter per process)",
    )
    serving_cpus: str = setting(
        "auto",
        group=ENGINE,
        choices=("auto", "all"),
        help="where the worker's own threads run: auto (off the cores vLLM's CPU build binds"
        " its model runners to, when cores are left; each engine core's main thread then"
        " runs on its runners' cores) or all",
    )
    max_loras: int = setting(
        0,
        group=ENGINE,
        ge=0,
        help="LoRA adapters vLLM batches at once (0: LoRA off); the reference engine always"
        " serves adapters",
    )
    max_lora_rank: int = setting(16, group=ENGINE, ge=1, help="the largest LoRA rank vLLM serves")
    tensor_parallel_size: int = setting(
        1, group=ENGINE, ge=1, help="GPUs one model is sharded over (vLLM)"
    )

    def check(self) -> None:
        if self.engine == "vllm" and self.role != "both" and not self.kv_shared_path:
            # vLLM moves KV caches only through its connector's shared storage: a vLLM
            # worker in a prefill or decode pool without it would serve nothing.
            raise ConfigError(
                "kv_shared_path", f"required for a vllm worker with --role {self.role}"
            )
        if self.rest_socket and self.rest_port < 0:
            raise ConfigError(
                "rest_socket", "needs the REST endpoint (--rest-port -1 turns it off)"
            )

    @property
    def models(self) -> list[tuple[str, Path]]:
        """The ``--model`` entries: (name, directory)."""
        return [parse_model_spec(spec) for spec in self.model]

    @property
    def local_roots(self) -> PathRoots:
        """Where LoadModel's local_path may point: ``--model-root`` and the operator's
        own ``--model`` directories (a catalogue may name them)."""
        return PathRoots([*self.model_root, *(path for _, path in self.models)])

    @property
    def queue_limits(self) -> QueueLimits:
        """The admission queue's bounds (worker/admission.py)."""
        return QueueLimits(per_client=self.max_queued_per_client, total=self.max_queued)


def vllm_config(settings: WorkerSettings) -> VllmConfig:
    """vLLM's engine configuration; ``--compile auto`` resolves by looking for a GPU, and
    sleep mode is on where there is one."""
    has_gpu = nvml_memory() is not None
    return VllmConfig(
        dtype=settings.dtype,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        cpu_kvcache_space_gib=settings.cpu_kvcache_space_gib,
        enable_prefix_caching=settings.enable_prefix_caching,
        quantization=settings.quantization,
        tensor_parallel_size=settings.tensor_parallel_size,
        kv_role=settings.role if settings.kv_shared_path else None,
        kv_shared_path=settings.kv_shared_path,
        compile=resolve_compile_mode(settings.compile, has_gpu=has_gpu),
        load_format=settings.load_format,
        sleep_mode=has_gpu,  # vLLM's sleep mode exists on GPUs only
        keep_off_engine_cpus=settings.serving_cpus == "auto",
        lora=VllmLora(max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank),
    )
