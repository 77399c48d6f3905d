"""proxy/k8s.py against a fake API server speaking the real Kubernetes wire format, through
the real kubernetes_asyncio client configured from a kubeconfig: workers appear,
disappear, scale to zero and back; the watch survives 410 Gone by relisting."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_kube_api import FakeKubeApi

from proxy.k8s import (
    DeploymentScaler,
    EndpointSliceWatcher,
    MembershipChange,
    load_api_client,
)

NS = "helios"
WORKER = {
    "app.kubernetes.io/component": "worker",
    "helios.ai/model": "tiny",
    "helios.ai/role": "both",
    "kubernetes.io/service-name": "helios-worker-tiny",
}


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[FakeKubeApi, Path]]:
    api = FakeKubeApi()
    url = await api.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context: {{cluster: fake, user: tester, namespace: {NS}}}
current-context: fake
users:
- name: tester
  user: {{token: test-token}}
"""
    )
    yield api, kubeconfig
    await api.stop()


class Follower:
    """Consumes watcher.changes() in a task, like the proxy's worker pool would."""

    def __init__(self, watcher: EndpointSliceWatcher) -> None:
        self.watcher = watcher
        self.queue: asyncio.Queue[MembershipChange] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for change in self.watcher.changes():
            await self.queue.put(change)

    async def next(self, n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            change = await asyncio.wait_for(self.queue.get(), 10)
            out.append((change.kind, change.endpoint.address))
        return sorted(out)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_proxy_k8s_follows_workers_through_endpoint_slices(
    kube: tuple[FakeKubeApi, Path],
) -> None:
    api, kubeconfig = kube
    await api.put_slice(NS, "tiny-abc", WORKER, ["10.0.0.1", "10.0.0.2"])
    await api.put_slice(NS, "other", {"app.kubernetes.io/component": "db"}, ["10.9.9.9"])
    client = await load_api_client(str(kubeconfig))
    watcher = EndpointSliceWatcher(client, NS, watch_timeout_seconds=2)
    follower = Follower(watcher)
    try:
        assert await follower.next(2) == [("added", "10.0.0.1:50051"), ("added", "10.0.0.2:50051")]
        member = watcher.members["10.0.0.1:50051"]
        assert (member.model, member.role, member.service) == ("tiny", "both", "helios-worker-tiny")
        assert member.pod == "tiny-abc-pod-0"

        # A third pod comes up, not ready yet: nothing; then ready: added.
        await api.put_slice(NS, "tiny-abc", WORKER, ["10.0.0.1", "10.0.0.2"])
        await api.put_slice(NS, "tiny-new", WORKER, ["10.0.0.3"], ready=False)
        await api.bookmark()
        await api.put_slice(NS, "tiny-new", WORKER, ["10.0.0.3"])
        assert await follower.next(1) == [("added", "10.0.0.3:50051")]

        # Scale down: one pod leaves its slice; the slice of the other goes away.
        await api.put_slice(NS, "tiny-abc", WORKER, ["10.0.0.1"])
        assert await follower.next(1) == [("removed", "10.0.0.2:50051")]
        await api.delete_slice(NS, "tiny-new")
        assert await follower.next(1) == [("removed", "10.0.0.3:50051")]
        # Scale to zero and back.
        await api.put_slice(NS, "tiny-abc", WORKER, [])
        assert await follower.next(1) == [("removed", "10.0.0.1:50051")]
        assert watcher.members == {}
        await api.put_slice(NS, "tiny-abc", WORKER, ["10.0.0.7"])
        assert await follower.next(1) == [("added", "10.0.0.7:50051")]
        assert follower.queue.empty()
        assert api.list_calls == 1  # everything above came through the watch
    finally:
        await follower.stop()
        await client.close()


async def test_proxy_k8s_relists_after_410_gone(kube: tuple[FakeKubeApi, Path]) -> None:
    api, kubeconfig = kube
    await api.put_slice(NS, "tiny-a", WORKER, ["10.0.0.1"])
    client = await load_api_client(str(kubeconfig))
    watcher = EndpointSliceWatcher(client, NS, watch_timeout_seconds=2, retry_seconds=0.05)
    follower = Follower(watcher)
    try:
        assert await follower.next(1) == [("added", "10.0.0.1:50051")]
        # History is compacted while changes happen: the open watch gets ERROR 410, the
        # watcher relists and reports the difference (one gone, one new).
        await api.delete_slice(NS, "tiny-a")
        await api.put_slice(NS, "tiny-b", WORKER, ["10.0.0.2"])
        await api.compact()
        changes = await follower.next(2)
        assert ("added", "10.0.0.2:50051") in changes
        assert ("removed", "10.0.0.1:50051") in changes
        assert watcher.relists >= 2
        # ...and it keeps watching from the new list's version.
        await api.put_slice(NS, "tiny-b", WORKER, ["10.0.0.2", "10.0.0.3"])
        assert await follower.next(1) == [("added", "10.0.0.3:50051")]
    finally:
        await follower.stop()
        await client.close()


async def test_proxy_k8s_scales_a_deployment_to_zero_and_back(
    kube: tuple[FakeKubeApi, Path],
) -> None:
    api, kubeconfig = kube
    api.deployments[(NS, "helios-worker-tiny")] = 2
    client = await load_api_client(str(kubeconfig))
    scaler = DeploymentScaler(client, NS)
    try:
        assert await scaler.replicas("helios-worker-tiny") == (2, 2)
        assert await scaler.scale("helios-worker-tiny", 0) == 0
        assert api.deployments[(NS, "helios-worker-tiny")] == 0
        assert await scaler.scale("helios-worker-tiny", 1) == 1
        assert await scaler.replicas("helios-worker-tiny") == (1, 1)
        assert [p[0] for p in api.patches] == ["application/merge-patch+json"] * 2
        with pytest.raises(ApiException) as missing:
            await scaler.scale("helios-worker-nope", 1)
        assert missing.value.status == 404
        with pytest.raises(ValueError):
            await scaler.scale("helios-worker-tiny", -1)
    finally:
        await client.close()
