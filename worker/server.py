"""The worker process: builds the engine(s), serves WorkerService and (for requests
Envoy routes straight here) InferenceService, drains on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import grpc
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

from openai_compat.servicer import InferenceServicer
from runtime.config import (
    ConfigError,
    add_server_arguments,
    env_default,
    helios_home,
    settings_from_args,
)
from runtime.paths import PathRoots, split_roots
from runtime.server import Cleanup, Register, run
from worker.adapters import AdapterStore
from worker.admission import Admission, QueueLimits
from worker.compile_mode import COMPILE_CHOICES, persistent_vllm_cache, resolve_compile_mode
from worker.disagg import PrefillElsewhere
from worker.engine.base import EngineClient
from worker.engine.pooling import is_embedding_model
from worker.engine.vllm_engine import VllmConfig
from worker.engine.vllm_lora import VllmLora
from worker.engine_metrics import EngineMetricsRefresher
from worker.engine_sizing import VllmSizer
from worker.estimator_client import EstimatorClient
from worker.generation_spans import set_worker_id
from worker.inference import EngineBackend
from worker.key_usage import KeyUsageLedger
from worker.kv_client import KVFetcher
from worker.memory import nvml_memory
from worker.metrics import UsageLedger
from worker.models import EngineFactory, ModelManager
from worker.peer_client import PrefillClient
from worker.prefill_peers import PrefillPeers
from worker.servicer import ROLES, WorkerServicer
from worker.storage_client import StorageClient

logger = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
INFERENCE_SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
DEFAULT_CAPACITY_BYTES = 8 * 1024**3


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError("model", f"expected NAME=PATH, got {spec!r}")
    return name, Path(path)


def decode_side(models: ModelManager) -> tuple[PrefillPeers, KVFetcher, PrefillElsewhere]:
    """What a decode-role worker needs to serve whole requests itself: its prefill pools
    (for its WorkerServicer's heartbeats to fill), the KV fetcher (shared with Decode) and
    the split serving (for its EngineBackend). Built for every role: only a decode-role
    worker's backend uses them."""
    peers = PrefillPeers()
    kv = KVFetcher()
    return peers, kv, PrefillElsewhere(models, peers, PrefillClient(), kv)


def register_services(worker: WorkerServicer, inference: InferenceServicer) -> Register:
    """A worker's two contracts on one server: WorkerService (the proxy's control and
    relayed generations) and InferenceService (OpenAI requests routed here by Envoy)."""

    def register(server: grpc.aio.Server) -> list[str]:
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(worker, server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
        return [SERVICE_NAME, INFERENCE_SERVICE_NAME]

    return register


def transformers_engine_factory(max_concurrency: int) -> EngineFactory:
    """The CPU reference engine; imported lazily so that torch loads only when used."""

    async def build(name: str, path: Path) -> EngineClient:
        if await asyncio.to_thread(is_embedding_model, path):
            from worker.engine.embedding_engine import TransformersEmbeddingEngine

            return await TransformersEmbeddingEngine.load(
                path, name, max_concurrency=max_concurrency
            )
        from worker.engine.transformers_engine import TransformersEngine

        return await TransformersEngine.load(path, name, max_concurrency=max_concurrency)

    return build


def preimport_transformers_engine() -> None:
    """The reference engine's imports: torch and transformers' auto classes, ~6 s of a
    small CPU (the load itself of a small model: ~0.2 s). Run in a thread once the worker
    is up, so that its first LoadModel (a cold start, or a restarted worker taking over a
    dead one's model) does not pay them."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import worker.engine.transformers_engine  # noqa: F401


def vllm_engine_factory(config: VllmConfig, sizer: VllmSizer | None = None) -> EngineFactory:
    """vLLM's AsyncLLM (continuous batching, paged KV cache, prefix caching); with a
    sizer, the limits left unset come from the memory estimate."""

    async def build(name: str, path: Path) -> EngineClient:
        if await asyncio.to_thread(is_embedding_model, path):  # vLLM's pooling runner
            from worker.engine.vllm_pooling import VllmEmbeddingEngine

            return await VllmEmbeddingEngine.load(path, name, config)
        from worker.engine.vllm_engine import VllmEngine

        sized = config if sizer is None else await sizer.size(name, path, config)
        return await VllmEngine.load(path, name, sized)

    return build


def after_preimport(factory: EngineFactory) -> EngineFactory:
    """``factory``, whose loads wait for :func:`preimport_transformers_engine` (started now,
    in a thread): never two threads in transformers' lazy imports at once (that race
    fails with "cannot import name 'AutoModelForCausalLM'")."""
    preimport = asyncio.get_running_loop().run_in_executor(None, preimport_transformers_engine)
    preimport.add_done_callback(_log_preimport_failure)

    async def build(name: str, path: Path) -> EngineClient:
        await asyncio.shield(preimport)
        return await factory(name, path)

    return build


def _log_preimport_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("engine imports failed", exc_info=future.exception())


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None


def _optional_float(value: str | None) -> float | None:
    return float(value) if value else None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine choice and vLLM's knobs (env: HELIOS_WORKER_<NAME>)."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default=env_default("worker", "engine", "transformers"),
        help="transformers: the CPU reference engine; vllm: vLLM's async engine",
    )
    group.add_argument(
        "--dtype",
        default=env_default("worker", "dtype", "auto"),
        help="weights dtype (auto, float32, bfloat16, float16); vLLM engine",
    )
    group.add_argument(
        "--max-num-seqs",
        type=int,
        default=_optional_int(env_default("worker", "max_num_seqs")),
        help="sequences batched at once (vLLM); default: vLLM's",
    )
    group.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=_optional_int(env_default("worker", "max_num_batched_tokens")),
        help="tokens per scheduler step (vLLM); default: vLLM's",
    )
    group.add_argument(
        "--max-model-len",
        type=int,
        default=_optional_int(env_default("worker", "max_model_len")),
        help="context length cap (vLLM); default: the model's",
    )
    group.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=_optional_float(env_default("worker", "gpu_memory_utilization")),
        help="fraction of GPU memory vLLM may use (GPU build)",
    )
    group.add_argument(
        "--cpu-kvcache-space-gib",
        type=float,
        default=_optional_float(env_default("worker", "cpu_kvcache_space_gib")),
        help="KV cache size in GiB for the CPU build of vLLM (VLLM_CPU_KVCACHE_SPACE)",
    )
    group.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=env_default("worker", "enable_prefix_caching", "true").lower() == "true",
        help="vLLM's automatic prefix caching",
    )
    group.add_argument(
        "--quantization",
        default=env_default("worker", "quantization") or None,
        help="vLLM quantization method (awq, gptq, fp8, ...); default: none / the model's",
    )
    group.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=env_default("worker", "compile", "auto"),
        help="vLLM's torch.compile: full (compiled, cached under $HELIOS_HOME across starts),"
        " eager (no compilation: the fastest start), auto (full on a GPU, eager on a CPU)",
    )
    group.add_argument(
        "--max-loras",
        type=int,
        default=int(env_default("worker", "max_loras", "0")),
        help="LoRA adapters vLLM batches at once (0: LoRA off); the reference engine always"
        " serves adapters",
    )
    group.add_argument(
        "--max-lora-rank",
        type=int,
        default=int(env_default("worker", "max_lora_rank", "16")),
        help="the largest LoRA rank vLLM serves",
    )
    group.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=int(env_default("worker", "tensor_parallel_size", "1")),
        help="GPUs one model is sharded over (vLLM)",
    )


def vllm_config_from_args(args: argparse.Namespace) -> VllmConfig:
    """Checked VllmConfig from the parsed flags."""
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(key, "must be >= 1")
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        raise ConfigError("gpu_memory_utilization", "must be in (0, 1]")
    if args.cpu_kvcache_space_gib is not None and args.cpu_kvcache_space_gib <= 0:
        raise ConfigError("cpu_kvcache_space_gib", "must be > 0")
    if args.tensor_parallel_size < 1:
        raise ConfigError("tensor_parallel_size", "must be >= 1")
    if args.max_loras < 0 or args.max_lora_rank < 1:
        raise ConfigError("max_loras", "must be >= 0, and max_lora_rank >= 1")
    return VllmConfig(
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kvcache_space_gib=args.cpu_kvcache_space_gib,
        enable_prefix_caching=args.enable_prefix_caching,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
        kv_role=args.role if args.kv_shared_path else None,
        kv_shared_path=args.kv_shared_path,
        compile=resolve_compile_mode(args.compile, has_gpu=nvml_memory() is not None),
        lora=VllmLora(max_loras=args.max_loras, max_lora_rank=args.max_lora_rank),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-worker", description=SERVICE_NAME)
    add_server_arguments(parser, "worker")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load this HF-layout model directory at start-up under NAME (repeatable);"
        " LoadModel may name it as local_path too",
    )
    parser.add_argument(
        "--model-root",
        action="append",
        type=Path,
        default=split_roots(env_default("worker", "model_roots")),
        metavar="DIR",
        help="a directory LoadModel's local_path may point into (repeatable; env"
        f" HELIOS_WORKER_MODEL_ROOTS, {os.pathsep!r}-separated). Default: none besides the"
        " --model directories; any other local_path is PERMISSION_DENIED",
    )
    parser.add_argument(
        "--worker-id",
        default=env_default("worker", "worker_id") or f"{socket.gethostname()}-{os.getpid()}",
    )
    parser.add_argument(
        "--memory-capacity-bytes",
        type=int,
        default=int(env_default("worker", "memory_capacity_bytes", str(DEFAULT_CAPACITY_BYTES))),
        help="memory this worker offers for weights (no GPU here: the scheduler uses this)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=int(env_default("worker", "max_concurrency", "4")),
        help="requests computed at once per model (reference engine); more wait their turn"
        " in the worker's fair queue (vLLM: --max-num-seqs)",
    )
    parser.add_argument(
        "--max-queued-per-client",
        type=int,
        default=int(env_default("worker", "max_queued_per_client", str(QueueLimits.per_client))),
        help="requests one client (API key; keyless requests are one client) may have waiting"
        " per model for a turn at the engine; more are refused with 429 / RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=int(env_default("worker", "max_queued", str(QueueLimits.total))),
        help="requests of all clients that may wait per model for a turn at the engine",
    )
    parser.add_argument(
        "--advertise-address",
        default=env_default("worker", "advertise_address", ""),
        metavar="HOST:PORT",
        help="this worker's address as other workers reach it (returned by Prefill)",
    )
    parser.add_argument(
        "--storaged",
        default=env_default("worker", "storaged", ""),
        metavar="HOST:PORT",
        help="storaged address: LoadModel without local_path fetches through EnsureModel",
    )
    parser.add_argument(
        "--estimator",
        default=env_default("worker", "estimator", ""),
        metavar="HOST:PORT",
        help="estimator address: a vLLM engine's KV cache, max_model_len and max_num_seqs,"
        " when not given, are sized from its memory estimate and the memory left here",
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=env_default("worker", "role", "both"),
        help="disaggregated serving: prefill serves Prefill and TransferKVCache only,"
        " decode serves Decode only, both (default) serves every generation RPC",
    )
    parser.add_argument(
        "--kv-shared-path",
        type=Path,
        default=env_default("worker", "kv_shared_path", None),
        help="vLLM prefill/decode: the directory (shared by the prefill and decode workers)"
        " where vLLM's KV connector saves and loads prompt KV caches",
    )
    add_engine_arguments(parser)
    return parser


def queue_limits_from_args(args: argparse.Namespace) -> QueueLimits:
    """The admission queue's bounds (worker/admission.py) from the parsed flags."""
    for key in ("max_queued_per_client", "max_queued"):
        if getattr(args, key) < 1:
            raise ConfigError(key, "must be >= 1")
    return QueueLimits(per_client=args.max_queued_per_client, total=args.max_queued)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, "worker")
    models = [parse_model_spec(spec) for spec in args.model]
    for root in args.model_root:
        if not root.expanduser().is_dir():
            raise ConfigError("model_root", f"{root} is not a directory")
    # The operator's own --model directories count as roots (a catalogue may name them).
    local_roots = PathRoots([*args.model_root, *(path for _, path in models)])
    if args.memory_capacity_bytes <= 0:
        raise ConfigError("memory_capacity_bytes", "must be > 0")
    if args.max_concurrency < 1:
        raise ConfigError("max_concurrency", "must be >= 1")
    if args.role not in ROLES:
        raise ConfigError("role", f"must be one of {', '.join(ROLES)}")
    if args.engine == "vllm" and args.role != "both" and not args.kv_shared_path:
        # vLLM moves KV caches only through its connector's shared storage: a vLLM worker
        # in a prefill or decode pool without it would serve nothing.
        raise ConfigError("kv_shared_path", f"required for a vllm worker with --role {args.role}")

    vllm_config = vllm_config_from_args(args)
    if args.engine == "vllm":
        cache = persistent_vllm_cache(helios_home())
        logger.info(
            "vllm compile settings", extra={"compile": vllm_config.compile, "cache": str(cache)}
        )
    admission = Admission(queue_limits_from_args(args))

    async def build() -> tuple[Register, Cleanup]:
        manager: ModelManager
        if args.engine == "vllm":
            sizer = None
            if args.estimator:
                sizer = VllmSizer(
                    EstimatorClient(args.estimator),
                    budget=lambda model: manager.budget_for(model),
                    gpu_free=lambda: gpu[1] if (gpu := nvml_memory()) is not None else None,
                )
            factory = vllm_engine_factory(vllm_config, sizer)
        else:
            factory = after_preimport(transformers_engine_factory(args.max_concurrency))
        storage = StorageClient(args.storaged) if args.storaged else None
        manager = ModelManager(
            factory,
            engine_kind=args.engine,
            capacity_bytes=args.memory_capacity_bytes,
            admission=admission,
            # LoRA adapters' files come through storaged, as models' do.
            adapters=AdapterStore(storage.ensure_model if storage is not None else None),
        )
        for name, path in models:
            async for step in manager.load(name, path):
                logger.info(step.message, extra={"model": name, "state": step.state.value})
        usage = UsageLedger()
        key_usage = KeyUsageLedger()
        peers, kv_fetcher, split = decode_side(manager)
        servicer = WorkerServicer(
            manager,
            worker_id=args.worker_id,
            advertise_address=args.advertise_address,
            kv_fetcher=kv_fetcher,
            storage=storage,
            role=args.role,
            usage=usage,
            local_roots=local_roots,
            prefill_peers=peers,
            key_usage=key_usage,
        )
        inference = InferenceServicer(
            EngineBackend(manager, usage, role=args.role, split=split, key_usage=key_usage)
        )
        engine_metrics = EngineMetricsRefresher(manager).start()

        async def cleanup() -> None:
            await engine_metrics.stop()
            await manager.shutdown()

        return register_services(servicer, inference), cleanup

    set_worker_id(args.worker_id)  # on every generation's span
    run(settings, build)


if __name__ == "__main__":
    main()
