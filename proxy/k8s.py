"""Kubernetes-aware worker discovery and scaling for the proxy (no protobuf here).

Discovery: :class:`EndpointSliceWatcher` lists the EndpointSlices of the worker Services
(label selector, e.g. ``app.kubernetes.io/component=worker``), then watches from the list's
resourceVersion with bookmarks. A watch that ends (server timeout) resumes from the last
resourceVersion; ``410 Gone`` (the version was compacted away) relists and diffs; every
``resync_seconds`` it relists anyway. Consumers get :class:`MembershipChange` events
(``added`` / ``removed`` of a ready :class:`WorkerEndpoint`) from :meth:`changes`, an async
iterator, so the proxy's worker pool applies them as they come.

Scaling: :class:`DeploymentScaler` reads and patches ``deployments/{name}/scale``;
:class:`DeploymentPools` scales a model's pools with it (the proxy's control plane).

The model and role of a worker come from the labels the Service (and so its
EndpointSlices) carries: ``helios.ai/model`` and ``helios.ai/role`` (deploy/worker-template).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from runtime.errors import FailedPreconditionError, UnavailableError

__all__ = [
    "MODEL_LABEL",
    "ROLE_LABEL",
    "DeploymentPools",
    "DeploymentScaler",
    "EndpointSliceWatcher",
    "MembershipChange",
    "WorkerEndpoint",
    "load_api_client",
]

log = logging.getLogger(__name__)

MODEL_LABEL = "helios.ai/model"
ROLE_LABEL = "helios.ai/role"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_T = TypeVar("_T")


@dataclass(frozen=True)
class WorkerEndpoint:
    """One ready worker pod as an EndpointSlice lists it."""

    address: str  # host:port, what the proxy dials
    model: str
    role: str  # "prefill" | "decode" | "both"
    service: str
    pod: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class MembershipChange:
    kind: Literal["added", "removed"]
    endpoint: WorkerEndpoint


async def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod: the service account; else ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def endpoints_of_slice(raw: Mapping[str, Any], port_name: str) -> dict[str, WorkerEndpoint]:
    """Ready endpoints of one EndpointSlice (raw JSON), keyed by address."""
    labels = (raw.get("metadata") or {}).get("labels") or {}
    model = labels.get(MODEL_LABEL)
    if not model:
        return {}
    port = next((p.get("port") for p in raw.get("ports") or [] if p.get("name") == port_name), None)
    if port is None:
        return {}
    out = {}
    for endpoint in raw.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        # ready unset means ready (API docs); terminating endpoints are not ready.
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        target = endpoint.get("targetRef") or {}
        for ip in endpoint.get("addresses") or []:
            host = f"[{ip}]" if ":" in ip else ip
            address = f"{host}:{port}"
            out[address] = WorkerEndpoint(
                address=address,
                model=model,
                role=labels.get(ROLE_LABEL, "both"),
                service=labels.get(SERVICE_NAME_LABEL, ""),
                pod=target.get("name") if target.get("kind") == "Pod" else None,
                node=endpoint.get("nodeName"),
            )
    return out


class EndpointSliceWatcher:
    """Follow the ready workers of a namespace through EndpointSlices."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        label_selector: str = "app.kubernetes.io/component=worker",
        *,
        port_name: str = "grpc",
        resync_seconds: float = 300.0,
        watch_timeout_seconds: int = 60,
        retry_seconds: float = 1.0,
    ) -> None:
        self._discovery = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.label_selector = label_selector
        self.port_name = port_name
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.retry_seconds = retry_seconds
        self._slices: dict[str, dict[str, WorkerEndpoint]] = {}
        self._members: dict[str, WorkerEndpoint] = {}
        self.resource_version: str | None = None
        self.relists = 0  # how many full lists (initial, 410 Gone, resync, errors)

    @property
    def members(self) -> dict[str, WorkerEndpoint]:
        """The current ready workers, by address."""
        return dict(self._members)

    def _diff(self) -> list[MembershipChange]:
        now: dict[str, WorkerEndpoint] = {}
        for endpoints in self._slices.values():
            now.update(endpoints)
        changes = [
            MembershipChange("removed", ep)
            for addr, ep in self._members.items()
            if now.get(addr) != ep
        ]
        changes += [
            MembershipChange("added", ep)
            for addr, ep in now.items()
            if self._members.get(addr) != ep
        ]
        self._members = now
        return changes

    async def _list(self) -> list[MembershipChange]:
        result = await self._discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.label_selector, _preload_content=False
        )
        body = await cast(Any, result).json()
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
        self._slices = {
            item["metadata"]["name"]: endpoints_of_slice(item, self.port_name)
            for item in body.get("items") or []
        }
        self.relists += 1
        log.info(
            "listed worker endpoint slices",
            extra={"slices": len(self._slices), "resource_version": self.resource_version},
        )
        return self._diff()

    async def changes(self) -> AsyncIterator[MembershipChange]:
        """Membership changes forever (until cancelled); the first list yields ``added``
        for every ready worker."""
        need_list = True
        last_list = 0.0
        while True:
            try:
                if need_list or time.monotonic() - last_list >= self.resync_seconds:
                    for change in await self._list():
                        yield change
                    need_list, last_list = False, time.monotonic()
                async for change in self._watch_once(last_list):
                    yield change
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch resourceVersion expired (410 Gone); relisting")
                else:
                    log.warning(
                        "EndpointSlice watch failed; relisting",
                        extra={"status": exc.status, "reason": exc.reason},
                    )
                    await asyncio.sleep(self.retry_seconds)
                need_list = True
            except (TimeoutError, OSError) as exc:
                log.warning("EndpointSlice watch lost its connection", extra={"error": str(exc)})
                await asyncio.sleep(self.retry_seconds)
                need_list = True

    async def _watch_once(self, last_list: float) -> AsyncIterator[MembershipChange]:
        remaining = self.resync_seconds - (time.monotonic() - last_list)
        timeout = max(1, min(self.watch_timeout_seconds, int(remaining)))
        w = watch.Watch()
        try:
            stream = w.stream(
                self._discovery.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=self.label_selector,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
            )
            async for event in stream:
                kind, raw = event["type"], event["raw_object"]
                self.resource_version = (raw.get("metadata") or {}).get(
                    "resourceVersion", self.resource_version
                )
                if kind == "BOOKMARK":
                    continue
                name = raw["metadata"]["name"]
                if kind == "DELETED":
                    self._slices.pop(name, None)
                else:  # ADDED / MODIFIED
                    self._slices[name] = endpoints_of_slice(raw, self.port_name)
                for change in self._diff():
                    yield change
        finally:
            with contextlib.suppress(Exception):
                await w.close()


class DeploymentScaler:
    """Scale a model's worker Deployment through its ``scale`` subresource."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._apps = client.AppsV1Api(api)
        self.namespace = namespace

    async def replicas(self, deployment: str) -> tuple[int, int]:
        """(desired, observed-ready per status) replicas of ``deployment``."""
        scale = await self._apps.read_namespaced_deployment_scale(deployment, self.namespace)
        return int(scale.spec.replicas or 0), int(scale.status.replicas or 0)

    async def scale(self, deployment: str, replicas: int) -> int:
        """Set the desired replicas (0 scales to zero); returns what the API recorded."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        scale = await self._apps.patch_namespaced_deployment_scale(
            deployment,
            self.namespace,
            {"spec": {"replicas": replicas}},
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]
        )
        log.info(
            "scaled worker deployment",
            extra={"deployment": deployment, "replicas": replicas},
        )
        return int(scale.spec.replicas or 0)


class DeploymentPools:
    """A model's worker pools as Deployments (``proxy.cold_start.PoolScaler``).

    Naming rule: a model's pools are the Deployments named like the worker Services its
    EndpointSlices come from (label ``kubernetes.io/service-name``): deploy/worker-template
    names both ``helios-worker`` plus the overlay's ``nameSuffix`` (``helios-worker-tiny``,
    ``helios-worker-llama-8b-prefill``, ...). ``pools`` maps a model to those names (seen
    endpoints, plus ``--k8s-pool MODEL=DEPLOYMENT`` for pools that start at zero); a
    disaggregated model has two (prefill and decode), scaled together.
    """

    def __init__(self, scaler: DeploymentScaler, pools: Callable[[str], set[str]]) -> None:
        self.scaler = scaler
        self._pools = pools

    def manages(self, model: str) -> bool:
        return bool(self._pools(model))

    async def scale_up(self, model: str) -> None:
        for deployment in sorted(self._pools(model)):
            desired, _ = await self._call(deployment, self.scaler.replicas(deployment))
            if desired == 0:
                await self._call(deployment, self.scaler.scale(deployment, 1))

    async def scale_down(self, model: str) -> None:
        for deployment in sorted(self._pools(model)):
            await self._call(deployment, self.scaler.scale(deployment, 0))

    async def _call(self, deployment: str, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except ApiException as exc:
            if exc.status == 404:
                raise FailedPreconditionError(
                    f"worker Deployment {deployment} does not exist in namespace"
                    f" {self.scaler.namespace}"
                ) from None
            raise UnavailableError(
                f"scaling Deployment {deployment} failed: {exc.status} {exc.reason}"
            ) from None
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            raise UnavailableError(
                f"scaling Deployment {deployment} failed: the Kubernetes API is unreachable ({exc})"
            ) from None
