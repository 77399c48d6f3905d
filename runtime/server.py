"""The one way a Helios gRPC server starts, serves, and stops.

:func:`start_server` gives every service the same shape: health checking
(``grpc.health.v1``), server reflection (so ``grpcurl`` works without .proto files),
the interceptors [RuntimeInterceptor (span, metrics, errors), *service extras], a
/metrics endpoint, a structured "serving" log line and an atomically written ready file.

:func:`run` is the process entry point around it: logging and tracing set up, an event
loop (uvloop unless ``--event-loop asyncio``), SIGTERM/SIGINT -> health NOT_SERVING ->
in-flight RPCs drain -> cleanup -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from runtime.channels import MAX_MESSAGE_BYTES, set_default_client_tls
from runtime.config import ServerSettings
from runtime.gcheap import freeze_long_lived
from runtime.interceptors import RuntimeInterceptor
from runtime.limits import (
    CONTROL_REQUEST_BYTES,
    METADATA_HARD_LIMIT_BYTES,
    METADATA_SOFT_LIMIT_BYTES,
    server_receive_limit,
)
from runtime.logging import configure_logging
from runtime.metrics import MetricsServer, serve_metrics
from runtime.reflection import enable_reflection
from runtime.tls import channel_credentials, server_credentials
from runtime.tracing import configure_tracing

__all__ = [
    "SERVER_OPTIONS",
    "Build",
    "Cleanup",
    "Register",
    "RunningServer",
    "run",
    "server_health",
    "start_server",
]

log = logging.getLogger(__name__)

# register(server) adds the servicers and returns the full names it registered,
# e.g. ("helios.v1.WorkerService",): those get health entries and reflection.
Register = Callable[[grpc.aio.Server], Sequence[str]]
Cleanup = Callable[[], Awaitable[None]]
# Called inside the running loop (so it may open channels, load models) before serving.
Build = Callable[[], Awaitable[tuple[Register, Cleanup | None]]]

SERVER_OPTIONS: tuple[tuple[str, int | str], ...] = (
    # Responses (KV cache frames, blob chunks) up to what runtime.channels receives. What a
    # server *receives* is sized per server by start_server (see _receive_options).
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Request headers: the edge admits 8 KiB (runtime.limits); grpc's default soft limit
    # (8 KiB, refusing at random up to a 16 KiB hard limit) would refuse that plus what
    # Envoy adds as RESOURCE_EXHAUSTED, which a REST client sees as 429.
    ("grpc.max_metadata_size", METADATA_SOFT_LIMIT_BYTES),
    ("grpc.absolute_max_metadata_size", METADATA_HARD_LIMIT_BYTES),
    # Accept the keepalive pings create_channel sends (every 30 s, also when idle);
    # grpc's default policy would answer them with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    # grpc >= 1.68 pings a client after some of its cancelled streams (RST_STREAM) and
    # drops the whole connection with GOAWAY "ping_timeout" when the ack is late, which
    # on a CPU-starved host (an engine busy on every core) killed healthy long streams.
    # Dead peers are still found by the client's keepalive (runtime.channels).
    ("grpc.http2.ping_on_rst_stream_percent", 0),
    ("grpc.http2.ping_timeout_ms", 300_000),
    # Without this, grpc on Linux binds with SO_REUSEPORT: a second server on a taken
    # port "succeeds" and silently shares it. We want that bind to fail loudly.
    ("grpc.so_reuseport", 0),
)


class RunningServer:
    """Handle on a started server: its bound ports, health servicer, and shutdown."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        port: int,
        metrics_port: int | None,
        health: health_aio.HealthServicer,
        settings: ServerSettings,
        service_names: tuple[str, ...],
        metrics_server: MetricsServer | None,
    ) -> None:
        self.server = server
        self.port = port
        self.metrics_port = metrics_port
        self.health = health
        self.settings = settings
        self.service_names = service_names
        self._metrics_server = metrics_server
        self._draining = False
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` a client in this process can dial."""
        return f"{_host_for_address(self.settings.host)}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: health NOT_SERVING, then ``server.stop(grace)``.

        ``grace`` (default ``settings.drain_seconds``) is how long in-flight RPCs,
        streams included, may keep running; new RPCs are refused at once. ``0`` cancels
        them now. Safe to call again, e.g. with 0 to cut a drain short.
        """
        if grace is None:
            grace = self.settings.drain_seconds
        if not self._draining:
            self._draining = True
            # No longer "ready": a launcher must not pick up our ports from here on.
            _remove_ready_file(self.settings.ready_file)
            # Health watchers and load balancers see NOT_SERVING before the port closes.
            await self.health.enter_graceful_shutdown()
            log.info("draining", extra={"grace_seconds": grace, "grpc_port": self.port})
        await self.server.stop(grace)
        metrics, self._metrics_server = self._metrics_server, None
        if metrics is not None:
            # shutdown() waits for the HTTP thread's poll loop (up to 0.5 s): off-loop.
            await asyncio.to_thread(metrics.close)
        if not self._stopped:
            self._stopped = True
            log.info("stopped", extra={"grpc_port": self.port})

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped (by :meth:`stop` or otherwise).

        Safe to cancel. grpc's own version awaits the server's internal shutdown future
        directly, so cancelling it (e.g. racing it against a signal) cancels that future
        and turns a later graceful stop into an immediate one; the shield prevents that.
        """
        await asyncio.shield(self.server.wait_for_termination())


class _HandlerRecorder:
    """Stands in for the server while ``register`` runs: it keeps the handlers, so that the
    real server can be built with a receive limit sized to the services it hosts (grpc's
    options are fixed when the server is made), then replays them onto it.

    Why per server and not one limit for all: grpc.max_receive_message_length is
    server-wide and grpc core enforces it before any Python runs, so it is the only limit
    that keeps an oversized message out of memory. A per-method limit can only be checked
    once the message is in (runtime.interceptors checks it before parsing). So each
    server's core limit is the largest its own methods need (storaged: 64 KiB; a worker or
    the proxy: a completion request), and each method's own limit applies below that.
    """

    def __init__(self, health: health_aio.HealthServicer) -> None:
        self._calls: list[tuple[str, tuple[Any, ...]]] = []
        self.services: list[str] = []
        # The server's health servicer, for register() to report more statuses on (see
        # server_health).
        self.health = health

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._calls.append(("add_generic_rpc_handlers", (handlers,)))
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            self.services.append(name() if callable(name) else "")

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self._calls.append(("add_registered_method_handlers", (service, handlers)))
        self.services.append(service)

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"register() may only add handlers to the server, not call {name}()")

    def replay(self, server: grpc.aio.Server) -> None:
        for name, args in self._calls:
            getattr(server, name)(*args)


def server_health(server: grpc.aio.Server) -> health_aio.HealthServicer:
    """The health servicer :func:`start_server` serves: call it from ``register(server)``
    to report statuses of more service names than the ones registered (e.g. the proxy
    tells the front door how each service of the mesh is doing)."""
    health = getattr(server, "health", None)
    if not isinstance(health, health_aio.HealthServicer):
        raise TypeError("server_health() works on the server start_server hands register()")
    return health


def _receive_options(services: Sequence[str]) -> list[tuple[str, int | str]]:
    """The receive limit for ``services``; and, on a server that takes control messages
    only, no BDP probing.

    Why: grpc core refuses an oversized message only after it has taken in bytes of it,
    and its BDP probe grows the flow-control window each stream may fill from HTTP/2's
    64 KiB to megabytes. 8 parallel 63 MB Stat calls grew storaged by ~100 MiB that way
    (memory the allocator then kept), though each was refused. Messages of at most 64 KiB
    need no bigger window; servers that take uploads or prompts keep the probe for their
    throughput.
    """
    limit = server_receive_limit(services)
    options: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", limit)]
    if limit <= CONTROL_REQUEST_BYTES:
        options.append(("grpc.http2.bdp_probe", 0))
    return options


def _host_for_address(host: str) -> str:
    # IPv6 literals need brackets in "host:port".
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """Mutual TLS (client certificates required) when ``settings.tls``; else plain-text."""
    if settings.tls is None:
        return None
    return server_credentials(settings.tls)


def _bind(server: grpc.aio.Server, settings: ServerSettings) -> int:
    address = f"{_host_for_address(settings.host)}:{settings.port}"
    credentials = _server_credentials(settings)
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises on bind failure (older versions return 0)
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return port


def _write_ready_file(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so readers see either no file or the whole file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic within one directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Persist the rename itself (the directory entry), not just the file's bytes.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _remove_ready_file(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def start_server(
    settings: ServerSettings,
    register: Register,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reflection_extra: Sequence[str] = (),
) -> RunningServer:
    """Build, bind and start a server; returns once it is serving (ready file written).

    Interceptor order, outermost first: :class:`RuntimeInterceptor` (the span, the
    metrics and error mapping: they record the status the client actually gets), then
    the service's own ``interceptors``.

    ``reflection_extra``: more full service names for reflection to describe without
    serving them (e.g. a front door that lets ``grpcurl`` see the whole mesh); their
    generated ``*_pb2`` modules must be imported so the descriptors are in the pool.
    """
    # A stale file from a previous run would hand a launcher dead ports.
    _remove_ready_file(settings.ready_file)
    server, health, service_names = await _build_server(register, interceptors, reflection_extra)
    port = _bind(server, settings)
    metrics_server: MetricsServer | None = None
    try:
        await server.start()
        if settings.metrics_enabled:
            metrics_server = serve_metrics(settings.metrics_port, settings.host)
        running = RunningServer(
            server=server,
            port=port,
            metrics_port=metrics_server.port if metrics_server else None,
            health=health,
            settings=settings,
            service_names=service_names,
            metrics_server=metrics_server,
        )
        _announce(running)
    except BaseException:
        await server.stop(None)
        if metrics_server is not None:
            metrics_server.close()
        raise
    return running


async def _build_server(
    register: Register,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    reflection_extra: Sequence[str],
) -> tuple[grpc.aio.Server, health_aio.HealthServicer, tuple[str, ...]]:
    """The server with the services ``register`` adds, health and reflection."""
    health = health_aio.HealthServicer()
    recorder = _HandlerRecorder(health)
    names = register(cast("grpc.aio.Server", recorder))
    if isinstance(names, str):  # a bare "pkg.Svc" would be iterated letter by letter
        raise TypeError("register() must return a sequence of service names, not a str")
    service_names = tuple(names)
    server = grpc.aio.server(
        interceptors=[
            RuntimeInterceptor(),
            *interceptors,
        ],
        options=[*SERVER_OPTIONS, *_receive_options([*service_names, *recorder.services])],
    )
    recorder.replay(server)

    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    # "" is the whole-server status (what `grpc_health_probe` asks without -service).
    for name in (*service_names, ""):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Reflection v1 and v1alpha (runtime/reflection.py), which list themselves.
    enable_reflection(
        dict.fromkeys((*service_names, *reflection_extra, HEALTH_SERVICE_NAME)), server
    )
    return server, health, service_names


def _announce(running: RunningServer) -> None:
    """Log that the server is serving, then write its ready file (last: whoever waits on
    that file may connect the moment it appears)."""
    settings = running.settings
    log.info(
        "serving",
        extra={
            "host": settings.host,
            "grpc_port": running.port,
            "metrics_port": running.metrics_port,
            "services": list(running.service_names),
            # "uvloop" or "asyncio": which loop the servicers run on.
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
    )
    if settings.ready_file is not None:
        _write_ready_file(
            settings.ready_file,
            {
                "service": settings.service,
                "host": settings.host,
                "grpc_port": running.port,
                "metrics_port": running.metrics_port,
                "pid": os.getpid(),
            },
        )


async def _first_of(*aws: Awaitable[Any]) -> None:
    """Wait until any of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _serve(
    settings: ServerSettings,
    build: Build,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    reflection_extra: Sequence[str],
) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    stop_now = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop_requested.is_set():
            log.info(
                "received %s, draining for up to %.1fs",
                name,
                settings.drain_seconds,
                extra={"signal": name},
            )
            stop_requested.set()
        else:  # a second Ctrl-C / SIGTERM: stop waiting for in-flight RPCs
            log.warning("received %s again, stopping now", name, extra={"signal": name})
            stop_now.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # build() may take long (a worker loading weights): a signal meanwhile aborts it.
        build_task = asyncio.ensure_future(build())
        await _first_of(asyncio.shield(build_task), stop_requested.wait())
        if not build_task.done():
            build_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build_task
            log.info("stopped before serving")
            return
        register, cleanup = build_task.result()
        freeze_long_lived()  # what start-up built lives as long as the process
        try:
            running = await start_server(
                settings, register, interceptors=interceptors, reflection_extra=reflection_extra
            )
            try:
                await _first_of(stop_requested.wait(), running.wait_for_termination())
            finally:
                drain = asyncio.ensure_future(running.stop(settings.drain_seconds))
                await _first_of(asyncio.shield(drain), stop_now.wait())
                if not drain.done():
                    await running.stop(0)
                await drain
        finally:
            if cleanup is not None:
                await cleanup()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop a server runs on (``--event-loop``); None: asyncio's default."""
    return uvloop.new_event_loop if event_loop == "uvloop" else None


def run(
    settings: ServerSettings,
    build: Build,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reflection_extra: Sequence[str] = (),
) -> None:
    """Run a service until SIGTERM/SIGINT, then drain and return (process exits 0).

    Sets up logging and tracing, runs ``build()`` in the event loop to get
    ``(register, cleanup)``, serves via :func:`start_server`, and on the first signal
    drains for up to ``settings.drain_seconds`` (a second signal cuts that short),
    then awaits ``cleanup()`` if given. A failure to start is logged and exits 1.
    ``interceptors`` and ``reflection_extra`` are passed to :func:`start_server`.
    """
    configure_logging(settings.service, settings.log_level, settings.log_format)
    provider = configure_tracing(settings.service, settings.otlp_endpoint)
    if settings.tls is not None:
        # Outgoing channels (create_channel) present this service's certificate too.
        set_default_client_tls(channel_credentials(settings.tls))
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(_serve(settings, build, interceptors, reflection_extra))
    except Exception:
        log.critical("fatal error, exiting", exc_info=True)
        raise SystemExit(1) from None
    finally:
        provider.shutdown()  # flush spans still queued for export
