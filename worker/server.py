"""The worker process: builds the engine(s), serves WorkerService and (for requests
Envoy routes straight here) InferenceService, drains on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

from openai_compat.rest import OpenAIRestHandler
from openai_compat.servicer import InferenceServicer
from runtime.config import ServerSettings, add_server_arguments, helios_home
from runtime.http_stream import HttpStreamServer, start_http_server
from runtime.limits import INFERENCE_BODY_BYTES
from runtime.server import Cleanup, Register, run
from runtime.settings import add_arguments, parse_settings
from runtime.tls import server_ssl_context
from worker.adapters import AdapterStore
from worker.admission import Admission
from worker.compile_mode import persistent_vllm_cache
from worker.disagg import PrefillElsewhere
from worker.engine.base import EngineClient
from worker.engine.pooling import is_embedding_model
from worker.engine.vllm_engine import VllmConfig
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
from worker.servicer import WorkerServicer
from worker.settings import WorkerSettings, vllm_config
from worker.storage_client import StorageClient

logger = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
INFERENCE_SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


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


def preimport_vllm_engine(fork_server: bool = True) -> None:
    """vLLM's imports in the worker's own process (~5 s of a small CPU, paid by the
    first load otherwise: a cold start or `helios up`'s ready time). With ``fork_server``
    on vLLM's CPU platform, vLLM's engine processes then start from a fork server with
    these imports done (worker/engine/vllm_processes.py) instead of importing them again
    each time (the engine core; its model runner is spawned as vLLM does). The CPU build
    is known before vLLM is imported: the server's imports then run beside these."""
    from worker.engine import vllm_processes

    started = fork_server and vllm_processes.cpu_build_installed()
    if started:
        vllm_processes.start_fork_server()
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

    import worker.engine.vllm_engine
    import worker.engine.vllm_pooling  # noqa: F401

    if fork_server and vllm_processes.vllm_runs_on_cpu():
        if not started:  # a CPU platform of another build (from source, say)
            vllm_processes.start_fork_server()
        vllm_processes.install()


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


def after_preimport(
    factory: EngineFactory, imports: Callable[[], None] = preimport_transformers_engine
) -> EngineFactory:
    """``factory``, whose loads wait for ``imports`` (started now, in a thread): never two
    threads in transformers' lazy imports at once (that race fails with "cannot import
    name 'AutoModelForCausalLM'")."""
    preimport = asyncio.get_running_loop().run_in_executor(None, imports)
    preimport.add_done_callback(_log_preimport_failure)

    async def build(name: str, path: Path) -> EngineClient:
        await asyncio.shield(preimport)
        return await factory(name, path)

    return build


def _log_preimport_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("engine imports failed", exc_info=future.exception())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-worker", description=SERVICE_NAME)
    add_server_arguments(parser, "worker")
    return add_arguments(parser, WorkerSettings, "worker")


def main(argv: Sequence[str] | None = None) -> None:
    server, settings = parse_settings(build_parser(), WorkerSettings, "worker", argv)
    if settings.engine == "vllm":
        # Before vLLM is imported: it reads where its cache is once.
        cache = persistent_vllm_cache(helios_home())
        logger.info("vllm compile cache", extra={"cache": str(cache)})
    set_worker_id(settings.worker_id)  # on every generation's span

    async def build() -> tuple[Register, Cleanup]:
        return await build_service(settings, server)

    run(server, build)


async def engine_factory(settings: WorkerSettings, budget: Callable[[str], int]) -> EngineFactory:
    """The engine the settings name. vLLM's limits left unset are sized from the
    estimator's memory estimate (when there is one) and ``budget(model)``."""
    if settings.engine != "vllm":
        return after_preimport(transformers_engine_factory(settings.max_concurrency))
    config = await asyncio.to_thread(vllm_config, settings)  # probes for a GPU
    logger.info("vllm compile settings", extra={"compile": config.compile})
    sizer = None
    if settings.estimator:
        sizer = VllmSizer(
            EstimatorClient(settings.estimator),
            budget=budget,
            gpu_free=lambda: gpu[1] if (gpu := nvml_memory()) is not None else None,
        )
    imports = functools.partial(
        preimport_vllm_engine, fork_server=settings.vllm_processes == "forkserver"
    )
    return after_preimport(vllm_engine_factory(config, sizer), imports)


async def start_rest_port(
    inference: InferenceServicer,
    port: int,
    server: ServerSettings | None,
    socket_path: str = "",
) -> HttpStreamServer | None:
    """The worker's OpenAI REST endpoint (openai_compat/rest.py) on ``port`` (0: any
    free one) of the gRPC server's host, and on the Unix socket ``socket_path`` when
    given, mutual TLS when the gRPC server has it; None for a negative ``port``
    (``--rest-port -1``)."""
    if port < 0:
        return None
    host = server.host if server is not None else "127.0.0.1"
    tls = server.tls if server is not None else None
    ssl_context = server_ssl_context(tls) if tls is not None else None
    rest = await start_http_server(
        OpenAIRestHandler(inference),
        host=host.removeprefix("[").removesuffix("]"),
        port=port,
        max_body=INFERENCE_BODY_BYTES,
        ssl_context=ssl_context,
    )
    if socket_path:
        try:
            await rest.listen_unix(socket_path, ssl_context)
        except BaseException:
            await rest.close(grace_s=0)
            raise
    logger.info(
        "serving openai rest",
        extra={"rest_port": rest.port, "rest_socket": socket_path, "tls": tls is not None},
    )
    return rest


async def build_service(
    settings: WorkerSettings, server: ServerSettings | None = None
) -> tuple[Register, Cleanup]:
    """The model manager (with the ``--model`` models loaded), WorkerService,
    InferenceService and the REST endpoint from the settings (``server``: the gRPC
    server's, whose host and TLS the REST endpoint shares), inside the running loop."""
    manager: ModelManager | None = None

    def budget(model: str) -> int:
        assert manager is not None  # sizing runs on loads, after the manager exists
        return manager.budget_for(model)

    factory = await engine_factory(settings, budget)
    storage = StorageClient(settings.storaged) if settings.storaged else None
    manager = ModelManager(
        factory,
        engine_kind=settings.engine,
        capacity_bytes=settings.memory_capacity_bytes,
        admission=Admission(settings.queue_limits),
        # LoRA adapters' files come through storaged, as models' do.
        adapters=AdapterStore(storage.ensure_model if storage is not None else None),
    )
    for name, path in settings.models:
        async for step in manager.load(name, path):
            logger.info(step.message, extra={"model": name, "state": step.state.value})
    usage = UsageLedger()
    key_usage = KeyUsageLedger()
    peers, kv_fetcher, split = decode_side(manager)
    inference = InferenceServicer(
        EngineBackend(manager, usage, role=settings.role, split=split, key_usage=key_usage)
    )
    rest = await start_rest_port(inference, settings.rest_port, server, settings.rest_socket)
    servicer = WorkerServicer(
        manager,
        worker_id=settings.worker_id,
        advertise_address=settings.advertise_address,
        kv_fetcher=kv_fetcher,
        storage=storage,
        role=settings.role,
        usage=usage,
        local_roots=settings.local_roots,
        prefill_peers=peers,
        key_usage=key_usage,
        rest_port=rest.port if rest is not None else 0,
        rest_socket=rest.socket_path if rest is not None else "",
    )
    engine_metrics = EngineMetricsRefresher(manager).start()

    async def cleanup() -> None:
        if rest is not None:  # streams still running get the same grace as RPCs
            await rest.close(grace_s=server.drain_seconds if server is not None else 5.0)
        await engine_metrics.stop()
        await manager.shutdown()

    return register_services(servicer, inference), cleanup


if __name__ == "__main__":
    main()
