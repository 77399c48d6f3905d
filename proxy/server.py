"""The proxy process: the edge Envoy's xDS control plane (ADS), the cold path's
InferenceService (what Envoy has no warm route for) and AdminService."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence

import grpc
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    estimator_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    storage_pb2,
    worker_pb2,
)

from proxy.admin import AdminServicer
from proxy.cold_start import PoolScaler
from proxy.control import ControlPlane
from proxy.dependencies import DependencyMonitor
from proxy.discovery import DiscoverySource, KubernetesDiscovery, StaticDiscovery
from proxy.estimate import MemoryEstimator
from proxy.fleet import WorkerPool
from proxy.health_client import GrpcHealthWatch
from proxy.limits import Admission, ApiKeys, KeyLimits
from proxy.registry import RegistryCatalogue, UsageReporter
from proxy.registry_client import GrpcRegistryClient
from proxy.service_health import ServiceHealthMirror
from proxy.servicer import InferenceServicer
from proxy.settings import ProxySettings, api_keys, xds_settings
from proxy.status import RecentErrors
from proxy.status_probe import StatusReporter
from proxy.worker_client import GrpcEstimatorClient, GrpcWorkerConnection
from proxy.xds_resources import DEFAULT_SYNC_GRACE_S
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import lb_policy_for
from runtime.config import add_server_arguments
from runtime.server import Cleanup, Register, run, server_health
from runtime.settings import add_arguments, parse_settings

# The status page lists the registry's models as listed at most this long ago.
KNOWN_MODELS_MAX_AGE_S = 5.0

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
# The proxy sits behind Envoy's one front door, where reflection requests land: it
# describes every helios.v1 service so `grpcurl list` there shows the whole mesh.
MESH_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (worker_pb2, "WorkerService"),
        (estimator_pb2, "EstimatorService"),
        (registry_pb2, "RegistryService"),
        (storage_pb2, "StorageService"),
    )
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-proxy", description=INFERENCE.full_name)
    add_server_arguments(parser, "proxy")
    return add_arguments(parser, ProxySettings, "proxy")


def main(argv: Sequence[str] | None = None) -> None:
    server, settings = parse_settings(build_parser(), ProxySettings, "proxy", argv)
    # What needs files read fails before anything starts (build_service reads them again).
    api_keys(settings)
    xds_settings(settings)

    async def build() -> tuple[Register, Cleanup]:
        return await build_service(settings)

    run(server, build, reflection_extra=MESH_SERVICES)


async def _discovery(
    settings: ProxySettings, closers: list[Cleanup]
) -> tuple[DiscoverySource, PoolScaler | None]:
    """The workers' source (and, on Kubernetes, the pools' scaler), started; what must
    be closed on the way out goes to ``closers``."""
    if settings.discovery != "kubernetes":
        return StaticDiscovery(settings.worker), None
    # Imported here: static mode needs no Kubernetes client.
    from proxy.k8s import DeploymentPools, DeploymentScaler, EndpointSliceWatcher, load_api_client

    api = await load_api_client(settings.kubeconfig or os.environ.get("KUBECONFIG") or None)
    closers.append(api.close)
    namespace = await asyncio.to_thread(settings.namespace)
    watcher = EndpointSliceWatcher(
        api, namespace, settings.k8s_worker_selector, resync_seconds=settings.k8s_resync
    )
    kube = KubernetesDiscovery(watcher, pools=settings.pools)
    kube.start()
    closers.insert(0, kube.close)
    return kube, DeploymentPools(DeploymentScaler(api, namespace), kube.pools)


async def build_service(settings: ProxySettings) -> tuple[Register, Cleanup]:
    """Discovery, control plane, xDS and servicers from the settings, started (inside
    the running loop): what ``main`` serves, and what tests serve in-process."""
    keys = await asyncio.to_thread(api_keys, settings)
    edge = await asyncio.to_thread(xds_settings, settings)
    closers: list[Cleanup] = []
    try:
        discovery, scaler = await _discovery(settings, closers)
        plane = build_control_plane(settings, keys, discovery=discovery, scaler=scaler)
        if plane.cold.registry is not None:
            await plane.cold.registry.refresh()
        await plane.refresh()  # serve a correct model list from the first request
    except BaseException:
        for close in closers:
            await close()
        raise
    plane.start()
    servicer = InferenceServicer(plane.serving)
    observers = _Observers.start(settings, plane)
    admin = AdminServicer(plane.warm, observers.dependencies, observers.status)
    # The edge Envoy's control plane: every model's workers, pushed on each fleet change.
    policy = lb_policy_for(settings.routing_policy, session_header=settings.session_header)
    xds = XdsServer(
        plane.pool,
        edge,
        policy_for=lambda model: policy,
        sync_grace_s=DEFAULT_SYNC_GRACE_S,
        throttled_keys=plane.serving.api_keys.exhausted,
    )
    xds.start()
    plane.cold.edge_synced = xds.edge_synced

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        observers.service_health.attach(server_health(server))
        return [INFERENCE.full_name, ADMIN.full_name, xds.register(server)]

    async def cleanup() -> None:
        await observers.stop()
        await xds.stop()
        await plane.stop()
        for close in closers:
            await close()

    return register, cleanup


@dataclasses.dataclass
class _Observers:
    """What watches the mesh for the front door: each dependency's health watch (down
    the moment its connection drops; the workers' state comes from the heartbeats), the
    status page, and health per service name (grpc.health.v1 of any helios.v1 service)."""

    watches: dict[str, GrpcHealthWatch]
    dependencies: DependencyMonitor
    status: StatusReporter
    service_health: ServiceHealthMirror

    @classmethod
    def start(cls, settings: ProxySettings, plane: ControlPlane) -> _Observers:
        addresses = {
            "registry": settings.registry,
            "estimator": settings.estimator,
            "storaged": settings.storaged,
        }
        watches = {name: GrpcHealthWatch(a) for name, a in addresses.items() if a}
        dependencies = DependencyMonitor(watches)
        dependencies.start()
        status = StatusReporter(
            plane.pool,
            lambda: _known_models(plane),
            dependencies=dependencies,
            storaged=settings.storaged,
            errors=_recent_errors(),
        )
        service_health = ServiceHealthMirror(
            {
                "registry": MESH_SERVICES[2],
                "estimator": MESH_SERVICES[1],
                "storaged": MESH_SERVICES[3],
            },
            MESH_SERVICES[0],
            plane.pool,
            dependencies,
        )
        return cls(watches, dependencies, status, service_health)

    async def stop(self) -> None:
        await self.service_health.stop()
        await self.status.close()
        await self.dependencies.stop()
        for watch in self.watches.values():
            await watch.close()


def _recent_errors() -> RecentErrors:
    """The status page's recent errors: this process's WARNING and ERROR records."""
    handler = RecentErrors()
    logging.getLogger().addHandler(handler)
    return handler


async def _known_models(plane: ControlPlane) -> list[str]:
    """The models the proxy may serve beside what the workers hold: its catalogue and
    the registry's (listed again when the last listing is a few seconds old)."""
    registry = plane.cold.registry
    held: Mapping[str, object] = {}
    if registry is not None:
        stale = time.monotonic() - registry.listed_at > KNOWN_MODELS_MAX_AGE_S
        held = await registry.refresh() if stale else registry.models
    return sorted({*plane.cold.catalogue, *held})


def build_control_plane(
    settings: ProxySettings,
    keys: Sequence[KeyLimits] | None = None,
    *,
    discovery: DiscoverySource | None = None,
    scaler: PoolScaler | None = None,
) -> ControlPlane:
    """The fleet, cold path and warm pools from the settings (static discovery from
    ``--worker`` unless ``discovery`` is given; ``keys`` read from the settings unless
    given); not started."""
    registry_client = GrpcRegistryClient(settings.registry) if settings.registry else None
    estimator = GrpcEstimatorClient(settings.estimator) if settings.estimator else None
    return ControlPlane.create(
        WorkerPool(),
        GrpcWorkerConnection,
        settings.catalogue,
        MemoryEstimator(estimator),
        discovery=discovery or StaticDiscovery(settings.worker),
        heartbeat_interval_s=settings.heartbeat_interval,
        heartbeat_timeout_s=settings.heartbeat_timeout,
        reconcile_interval_s=settings.reconcile_interval,
        registry=RegistryCatalogue(registry_client) if registry_client is not None else None,
        usage=(
            UsageReporter(registry_client, interval_s=settings.usage_interval)
            if registry_client is not None
            else None
        ),
        scaler=scaler,
        api_keys=ApiKeys(api_keys(settings) if keys is None else keys),
        admission=Admission(settings.max_queued_per_model),
        idle_ttl_s=settings.idle_ttl,
        load_timeout_s=settings.load_timeout,
        drain_s=settings.drain_timeout,
        prefetch=settings.prefetch,
        target_concurrency=settings.target_concurrency,
    )


if __name__ == "__main__":
    main()
