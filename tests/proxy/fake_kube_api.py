"""A small Kubernetes API server for tests: exactly the calls proxy/k8s.py makes, in the
real API's wire format (paths, query parameters, list/watch JSON, chunked watch stream,
Status objects), so the real kubernetes_asyncio client talks to it unchanged.

- GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=  (list)
- the same with ?watch=true&resourceVersion=&timeoutSeconds=&allowWatchBookmarks=
  (chunked JSON lines: ADDED / MODIFIED / DELETED / BOOKMARK; ERROR 410 Gone when the
  asked version is older than the compaction point)
- GET / PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web


def _parse_bool(text: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server parses ?watch= and friends."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (s.strip() for s in selector.split(","))):
        key, sep, value = term.partition("=")
        if sep:
            if labels.get(key) != value.lstrip("="):
                return False
        elif key not in labels:
            return False
    return True


class FakeKubeApi:
    def __init__(self) -> None:
        self.rv = 100
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, object)
        self.compacted_before = 0  # watches from an older version get 410 Gone
        self.deployments: dict[tuple[str, str], int] = {}
        self.patches: list[tuple[str, str, dict[str, Any]]] = []  # (content-type, name, body)
        self.list_calls = 0
        self.watch_calls = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -------------------------------------------------------------- test controls
    async def _record(self, kind: str, obj: dict[str, Any]) -> None:
        async with self._changed:
            self.events.append((self.rv, kind, copy.deepcopy(obj)))
            self._changed.notify_all()

    async def put_slice(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        ips: list[str],
        *,
        ready: bool = True,
        port: int = 50051,
    ) -> None:
        self.rv += 1
        key = (namespace, name)
        kind = "MODIFIED" if key in self.slices else "ADDED"
        obj = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "resourceVersion": str(self.rv),
            },
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "targetRef": {"kind": "Pod", "name": f"{name}-pod-{i}", "namespace": namespace},
                }
                for i, ip in enumerate(ips)
            ],
        }
        self.slices[key] = obj
        await self._record(kind, obj)

    async def delete_slice(self, namespace: str, name: str) -> None:
        self.rv += 1
        obj = self.slices.pop((namespace, name))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._record("DELETED", obj)

    async def bookmark(self) -> None:
        self.rv += 1
        await self._record(
            "BOOKMARK",
            {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.rv)},
            },
        )

    async def compact(self) -> None:
        """Forget history: every watch from an older version gets 410 Gone, now."""
        async with self._changed:
            self.compacted_before = self.rv + 1
            self.events.clear()
            self._changed.notify_all()

    # -------------------------------------------------------------- HTTP
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self._slices)
        scale = "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"
        app.router.add_get(scale, self._get_scale)
        app.router.add_patch(scale, self._patch_scale)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }

    async def _slices(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        if not _parse_bool(request.query.get("watch")):
            self.list_calls += 1
            items = [
                s
                for (n, _), s in sorted(self.slices.items())
                if n == ns and _matches(s["metadata"]["labels"], selector)
            ]
            return web.json_response(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        self.watch_calls += 1
        since = int(request.query.get("resourceVersion") or self.rv)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        bookmarks = _parse_bool(request.query.get("allowWatchBookmarks"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if since < self.compacted_before - 1:
            await send(
                "ERROR",
                self._status(
                    410, "Expired", f"too old resource version: {since} ({self.compacted_before})"
                ),
            )
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent_up_to = since
        while True:
            async with self._changed:
                pending = [e for e in self.events if e[0] > sent_up_to]
                if not pending:
                    if since < self.compacted_before - 1 or sent_up_to < self.compacted_before - 1:
                        await send(
                            "ERROR", self._status(410, "Expired", "too old resource version")
                        )
                        return response
                    left = deadline - loop.time()
                    if left <= 0 or self._runner is None:
                        return response
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        return response
                    continue
            for rv, kind, obj in pending:
                sent_up_to = rv
                if kind == "BOOKMARK":
                    if bookmarks:
                        await send(kind, obj)
                elif ns == obj["metadata"].get("namespace") and _matches(
                    obj["metadata"].get("labels") or {}, selector
                ):
                    await send(kind, obj)

    def _scale_obj(self, ns: str, name: str) -> dict[str, Any]:
        replicas = self.deployments[(ns, name)]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": str(self.rv)},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "selector": f"helios.ai/model={name}"},
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if (ns, name) not in self.deployments:
            return web.json_response(
                self._status(404, "NotFound", f'deployments.apps "{name}" not found'), status=404
            )
        return web.json_response(self._scale_obj(ns, name))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        ctype = request.headers.get("Content-Type", "")
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return web.json_response(self._status(415, "UnsupportedMediaType", ctype), status=415)
        if (ns, name) not in self.deployments:
            return web.json_response(
                self._status(404, "NotFound", f'deployments.apps "{name}" not found'), status=404
            )
        body = await request.json()
        replicas = body.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return web.json_response(self._status(422, "Invalid", "spec.replicas"), status=422)
        self.patches.append((ctype, name, body))
        self.rv += 1
        self.deployments[(ns, name)] = replicas
        return web.json_response(self._scale_obj(ns, name))
