"""The local mesh's processes: each service its own process, Envoy in front.

Start order: registry, then estimator and storaged (in parallel) -> worker(s) -> proxy (it
needs the workers' addresses) -> Envoy (it needs every address). Stop order is the
reverse, edge first: Envoy stops taking traffic, then the proxy and the services drain.

Once up, every process is supervised (cli/processes.py): one that dies, whatever its exit,
is started again with exponential backoff on the ports it had (so every peer's address
for it stays valid) while the rest keep serving; only a failure to start at `helios up`
time is fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from helios.v1 import admin_pb2, estimator_pb2, inference_pb2, registry_pb2, storage_pb2

from cli.envoy import EnvoyProcess
from cli.keys import admin_key_path
from cli.mesh_models import import_models, wait_for_models, warm_models
from cli.processes import (
    Restart,
    ServiceProcess,
    ServiceStartError,
    Supervised,
    popen_exit,
    supervise,
)
from cli.up_options import MeshOptions, edge_access, tokens_per_minute_only
from edge import (
    Upstream,
    UpstreamTls,
    build_descriptor_set,
    edge_virtual_host,
    render_envoy_config,
    write_edge_routes,
)
from runtime.config import helios_home
from runtime.limits import MAX_SOCKET_PATH_BYTES

# `helios up`'s records, whichever of its modules writes them.
logger = logging.getLogger("helios.up")

SERVICE_READY_TIMEOUT = 180.0
STOP_GRACE = 15.0


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
        # Model name -> registry id, for the models that went through the registry.
        self.imported: dict[str, str] = {}
        self.startup_seconds = 0.0
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
        assert self.proxy is not None
        await warm_models(self.proxy.address, list(self.imported.values()))

    async def start(self) -> None:
        """Every process in the start order (module docstring), then until each model has
        a ready replica behind the front door."""
        started = time.monotonic()
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        importing = await self._start_registry()
        storaged = await self._start_estimator_and_storaged()
        if importing is not None:
            self.imported = await importing
        if not storaged.ready:
            self.imported.clear()  # nothing can fetch them: serve from the directories
        await self._start_workers(storaged)
        self.proxy = self._service("proxy", self._proxy_args(storaged))
        await self._start_all([self.proxy])
        await self._warm_registry_models()
        self.envoy = await self._start_edge(self.proxy)
        await self._wait_for_models()
        self.startup_seconds = time.monotonic() - started

    @property
    def _model_dirs(self) -> list[str]:
        return sorted({str(path) for _, path in self.options.models})

    async def _start_registry(self) -> asyncio.Future[dict[str, str]] | None:
        """The registry, and (once it serves) the models' import into it, left running."""
        # ImportModel reads server directories only under --import-root: exactly the
        # served models' directories (not their parents, which may be a home directory).
        self.registry.args = [
            "--data-dir",
            str(helios_home() / "registry"),
            *(arg for d in self._model_dirs for arg in ("--import-root", d)),
            *self._tls_args("registry"),
        ]
        await self._start_all([self.registry])
        if not self.registry.ready:
            return None
        return asyncio.ensure_future(import_models(self.registry.address, self.options.models))

    async def _start_estimator_and_storaged(self) -> ServiceProcess:
        options = self.options
        # The estimator reads configs through the registry, and local directories only
        # under these roots (the served models' parents), never an arbitrary client path.
        roots = sorted({str(path.parent) for _, path in options.models})
        self.estimator.args += [arg for root in roots for arg in ("--model-root", root)]
        storaged_args = [
            "--tier",
            f"ram={options.state_dir / 'storaged-ram'}:1GiB",
            "--tier",
            f"ssd={helios_home() / 'storaged'}:20GiB",
        ]
        if self.registry.ready:
            storaged_args += ["--registry", self.registry.address]
            self.estimator.args += ["--registry", self.registry.address]
        self.storaged = self._service("storaged", storaged_args, essential=False)
        await self._start_all([self.estimator, self.storaged])
        return self.storaged

    async def _start_workers(self, storaged: ServiceProcess) -> None:
        # LoadModel local paths (the proxy's catalogue) only inside the models' directories.
        worker_args = ["--engine", self.options.engine]
        worker_args += [arg for d in self._model_dirs for arg in ("--model-root", d)]
        if storaged.ready:
            worker_args += ["--storaged", storaged.address]
        if self.estimator.ready:  # sizes vLLM engines to the memory each worker has
            worker_args += ["--estimator", self.estimator.address]
        for name, path in self._local_models:
            worker_args += ["--model", f"{name}={path}"]
        self.workers = [
            self._service(
                f"worker-{i}",
                ["--worker-id", f"worker-{i}", *worker_args, *self._rest_socket_args(i)],
                module="worker.server",
            )
            for i in range(self.options.workers)
        ]
        await self._start_all(self.workers)

    def _rest_socket(self, index: int) -> Path | None:
        """Where worker ``index`` also serves its REST endpoint: a Unix socket, for the
        edge Envoy on this same host (no TCP between them: about a third less CPU per
        streamed token on both ends, measured). None under --tls (the sockets would need
        the same certificates) or when the state directory's path is too long for one."""
        if self.options.tls_dir is not None:
            return None
        path = (self.options.state_dir / "run" / f"worker-{index}.rest.sock").absolute()
        return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES else None

    def _rest_socket_args(self, index: int) -> list[str]:
        path = self._rest_socket(index)
        if path is None:
            return []
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return ["--rest-socket", str(path)]

    def _proxy_args(self, storaged: ServiceProcess) -> list[str]:
        options = self.options
        proxy_args = [arg for w in self.workers for arg in ("--worker", w.address)]
        # The catalogue the proxy may cold-start and scale (min 1 replica: the models
        # `helios up` serves stay warm).
        for name, path in self._local_models:
            proxy_args += ["--model", f"{name}={path},min=1"]
        if self.estimator.ready:
            proxy_args += ["--estimator", self.estimator.address]
        if self.registry.ready:
            proxy_args += ["--registry", self.registry.address]
        if storaged.ready:  # for /v1/health: the proxy checks it, the workers use it
            proxy_args += ["--storaged", storaged.address]
        # Envoy checks who may call and the requests per minute; the proxy (cold path)
        # counts tokens per minute. An admin key passes wherever an inference key does.
        if options.api_keys:
            tokens_only = [tokens_per_minute_only(spec) for spec in options.api_keys]
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
        if any(self._rest_socket(i) is not None for i in range(len(self.workers))):
            proxy_args.append("--xds-local-sockets")  # Envoy runs here, beside the workers
        gateway_tls = self._envoy_tls()
        if gateway_tls is not None:  # Envoy's certificate towards the workers, too
            proxy_args += [
                f"--xds-upstream-tls-cert={gateway_tls.cert}",
                f"--xds-upstream-tls-key={gateway_tls.key}",
                f"--xds-upstream-tls-ca={gateway_tls.ca}",
            ]
        return proxy_args

    async def _start_edge(self, proxy: ServiceProcess) -> EnvoyProcess:
        """Envoy in front of every service that serves (its config kept for restarts)."""
        descriptor = build_descriptor_set(self.options.state_dir / "helios.pb")
        upstream = {
            s.name: Upstream(s.name, s.ready["host"], s.ready["grpc_port"])
            for s in self.services
            if s.ready
        }
        metrics_port = proxy.ready.get("metrics_port")
        metrics = Upstream("proxy-metrics", upstream["proxy"].host, metrics_port or 0)
        self._envoy_config = {
            "listen_host": self.options.host,
            "admin_port": 0,
            "descriptor_path": descriptor,
            "upstream_tls": self._envoy_tls(),
            "xds_upstream": upstream["proxy"],
            "tracing": self.options.tracing,
            **self._edge(upstream, metrics if metrics_port else None),
        }
        return await self.start_envoy(self.options.port)

    async def start_envoy(self, listen_port: int) -> EnvoyProcess:
        config = render_envoy_config(listen_port=listen_port, **self._envoy_config)
        return await EnvoyProcess.start(config, self.options.state_dir / "envoy")

    async def _wait_for_models(self) -> None:
        """Until every configured model has a ready replica, as seen through Envoy."""
        assert self.envoy is not None
        front_door = f"{self.options.host}:{self.envoy.listen_port}"
        await wait_for_models(front_door, set(self.served_models), self.options.admin_key)

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

    async def wait_exit(self) -> int:
        assert self._mesh.envoy is not None
        return await popen_exit(self._mesh.envoy.process)

    async def restart(self, limit_s: float) -> None:
        old = self._mesh.envoy
        assert old is not None
        self._mesh.envoy = await self._mesh.start_envoy(old.listen_port)
