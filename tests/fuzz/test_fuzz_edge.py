"""Property-based fuzzing of every REST route and every public RPC through the real front
door (`helios up`: Envoy, proxy, worker with the tiny model, estimator, registry,
storaged), deterministic (derandomized) so CI sees the same inputs every run.

For every input: no 5xx other than 503; a REST error is OpenAI-shaped
({"error": {"message", "type", ...}}), a validation error names its field; no error shows
a service's address, a server path or exception text; HEAD answers carry no body; a gRPC
call never ends UNKNOWN, INTERNAL or DATA_LOSS. After all of them (test_zz_*): every
process is the one that started (no crash, no restart), no ERROR record was logged, each
service's RSS stayed within bounds, health is ok and a normal request is served; and at
least MIN_INPUTS inputs were sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import psutil
import pytest
from fuzz_mesh import FuzzMesh
from helios.v1 import admin_pb2, estimator_pb2, inference_pb2, registry_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    MODEL,
    chat_bodies,
    completion_bodies,
    encoded,
    headers,
    json_values,
    methods,
    paths,
    proto_messages,
    segment,
)

MIN_INPUTS = 5000
# RSS growth allowed per process over the run (the reported holes grew GBs).
RSS_GROWTH_LIMIT = 300 * 1024 * 1024
TIMEOUT_S = 30.0

_ran: set[str] = set()


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


@pytest.fixture(scope="module")
def client(mesh: FuzzMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.base_url, timeout=TIMEOUT_S) as http:
        # Warm up (the model is loaded and served once), then take the RSS baseline.
        reply = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert reply.status_code == 200, reply.text
        mesh.baseline_rss = mesh.rss()
        yield http


@pytest.fixture(scope="module")
def channel(mesh: FuzzMesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.grpc_address) as ch:
        yield ch


# --- what every answer must satisfy ---------------------------------------------------
# The first word of a validation error is the field it is about (OpenAI's style).
KNOWN_FIELDS = {
    "request",
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "stream",
    "stream_options",
    "ignore_eos",
}
_FIELD = re.compile(r"^([a-z_]+)")


def check_rest(mesh: FuzzMesh, method: str, path: str, reply: httpx.Response) -> None:
    mesh.sent["rest"] += 1
    where = f"{method} {path[:120]} -> {reply.status_code} {reply.text[:300]!r}"
    assert reply.status_code < 500 or reply.status_code == 503, where
    if method == "HEAD":
        assert reply.content == b"", where
        return
    if reply.status_code < 400:
        return
    if reply.headers.get("content-type", "").startswith("application/grpc"):
        return  # a gRPC-framed answer to a request that said it was gRPC
    assert not mesh.leaks(reply.text), (mesh.leaks(reply.text), where)
    if not reply.request.url.raw_path.startswith(b"/v1/"):
        return  # not the REST API (the client may have normalised "a/../.." away)
    body = reply.json()
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], where
    assert isinstance(error["type"], str) and error["type"], where
    assert "code" in error and "param" in error, where
    assert not mesh.leaks(reply.text), (mesh.leaks(reply.text), where)
    if (
        reply.status_code == 400
        and error.get("code") == "INVALID_ARGUMENT"
        and path.startswith(("/v1/chat/completions", "/v1/completions"))
    ):
        match = _FIELD.match(error["message"])
        assert match and match.group(1) in KNOWN_FIELDS, where


BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def check_grpc(mesh: FuzzMesh, method: str, error: grpc.RpcError | None) -> None:
    mesh.sent["grpc"] += 1
    if error is None:
        return
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert code not in BAD_CODES, f"{method}: {code} {details[:300]!r}"
    assert not mesh.leaks(details), (mesh.leaks(details), method, details[:300])


# --- REST -------------------------------------------------------------------------------
def _post(
    mesh: FuzzMesh, client: httpx.Client, path: str, body: bytes, extra: dict[str, str]
) -> None:
    reply = client.post(path, content=body, headers={"content-type": "application/json", **extra})
    check_rest(mesh, "POST", path, reply)


@fuzz_settings(1300)
@given(body=encoded(chat_bodies()), extra=headers)
def test_rest_chat(
    mesh: FuzzMesh, client: httpx.Client, body: bytes, extra: dict[str, str]
) -> None:
    _ran.add("chat")
    _post(mesh, client, "/v1/chat/completions", body, extra)


@fuzz_settings(800)
@given(body=encoded(completion_bodies()), extra=headers)
def test_rest_completions(
    mesh: FuzzMesh, client: httpx.Client, body: bytes, extra: dict[str, str]
) -> None:
    _ran.add("completions")
    _post(mesh, client, "/v1/completions", body, extra)


estimator_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model_id": st.sampled_from([MODEL, "", "/etc/passwd", "x/y", "a" * 300])
        | st.text(max_size=20),
        "config": json_values,
        "dtype": st.sampled_from(["bf16", "fp8", "int4", "junk"]) | st.text(max_size=5),
        "batch_size": json_values,
        "max_seq_len": json_values,
        "mode": st.sampled_from(["inference", "training", "lora", "qlora", "x"]),
        "tensor_parallel_size": json_values,
        "gpu": st.sampled_from(["H100-80GB", "A100-80GB:MIG-1g.10gb", "nope"]),
        "gpu_memory_utilization": json_values,
        "requests": st.lists(json_values, max_size=3),
        "request": json_values,
        "target_bytes": json_values,
    },
)


@fuzz_settings(500)
@given(
    path=st.sampled_from(["/v1/estimate/memory", "/v1/estimate/batch", "/v1/estimate/optimize"]),
    body=encoded(estimator_bodies),
)
def test_rest_estimator_posts(mesh: FuzzMesh, client: httpx.Client, path: str, body: bytes) -> None:
    _ran.add("estimator")
    _post(mesh, client, path, body, {})


@fuzz_settings(300)
@given(
    path=st.sampled_from(
        ["/v1/estimate/model/", "/v1/estimate/gpu-compatibility/", "/v1/admin/evict/"]
    ),
    segments=st.lists(segment, min_size=1, max_size=3),
    query=st.sampled_from(["", "?dtype=fp8", "?dtype=%ff", "?gpu=H100-80GB", "?x=" + "a" * 200]),
    admin=st.booleans(),
)
def test_rest_path_parameters(
    mesh: FuzzMesh,
    client: httpx.Client,
    path: str,
    segments: list[str],
    query: str,
    admin: bool,
) -> None:
    _ran.add("path-parameters")
    full = path + "/".join(segments) + query
    if "evict" in path and MODEL in full:
        return  # never evict the model the suite is serving
    auth = {"authorization": f"Bearer {mesh.admin_key}"} if admin else {}
    method = "DELETE" if "evict" in path else "GET"
    reply = client.request(method, full, headers=auth)
    check_rest(mesh, method, full, reply)


admin_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model_id": st.sampled_from(["", "x/y", "/etc/ssh", "a" * 300]) | st.text(max_size=20),
        "replicas": json_values,
        "min_replicas": json_values,
        "max_replicas": json_values,
        "local_path": st.sampled_from(["/etc", "/root", "."]),
    },
)


@fuzz_settings(300)
@given(
    path=st.sampled_from(["/v1/admin/preload", "/v1/admin/scale"]),
    body=encoded(admin_bodies),
    key=st.sampled_from(["admin", "none", "wrong"]),
)
def test_rest_admin(mesh: FuzzMesh, client: httpx.Client, path: str, body: bytes, key: str) -> None:
    _ran.add("admin")
    if MODEL.encode() in body:
        return  # never scale or preload the model the suite is serving
    auth = {
        "admin": {"authorization": f"Bearer {mesh.admin_key}"},
        "wrong": {"authorization": "Bearer wrong"},
        "none": {},
    }[key]
    _post(mesh, client, path, body, auth)


@fuzz_settings(600)
@given(
    method=methods,
    path=paths,
    extra=headers,
    body=st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_rest_any_request(
    mesh: FuzzMesh,
    client: httpx.Client,
    method: str,
    path: str,
    extra: dict[str, str],
    body: bytes,
) -> None:
    _ran.add("any")
    if method in ("DELETE", "POST", "PUT", "PATCH") and "/admin/" in path:
        return  # admin writes are fuzzed above, away from the served model
    content = body if method not in ("GET", "HEAD") else None
    try:
        reply = client.request(method, path, headers=extra, content=content)
    except httpx.RemoteProtocolError:
        # Envoy closed the connection on a request HTTP/1.1 forbids (e.g. a body on a
        # malformed framing): a refusal, not a crash; the next request opens a new one.
        mesh.sent["rest"] += 1
        return
    check_rest(mesh, method, path, reply)


# --- gRPC ---------------------------------------------------------------------------------
def _public_methods() -> list[tuple[str, Any, bool, bool]]:
    """(path, input descriptor, server streaming, needs the admin key) of every public RPC."""
    found = []
    for module, service, admin in (
        (inference_pb2, "InferenceService", False),
        (estimator_pb2, "EstimatorService", False),
        (admin_pb2, "AdminService", True),
    ):
        desc = module.DESCRIPTOR.services_by_name[service]
        for m in desc.methods:
            found.append((f"/{desc.full_name}/{m.name}", m.input_type, m.server_streaming, admin))
    registry = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
    for name in ("ResolveModel", "GetManifest", "GetConfig", "ListModels"):
        m = registry.methods_by_name[name]
        found.append((f"/{registry.full_name}/{name}", m.input_type, False, False))
    return found


PUBLIC_METHODS = _public_methods()


def _call(
    channel: grpc.Channel,
    path: str,
    streaming: bool,
    payload: bytes,
    metadata: list[tuple[str, str]],
) -> grpc.RpcError | None:
    try:
        if streaming:
            for _ in channel.unary_stream(path)(payload, timeout=TIMEOUT_S, metadata=metadata):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as error:
        return error
    return None


def _limit_generation(message: Any) -> None:
    """A completion request that passes validation costs a few tokens at most."""
    params = getattr(message, "params", None)
    if params is not None and hasattr(params, "max_tokens"):
        if not params.HasField("max_tokens") or params.max_tokens > 3:
            params.max_tokens = 2
        if hasattr(params, "max_completion_tokens") and params.HasField("max_completion_tokens"):
            params.max_completion_tokens = min(params.max_completion_tokens, 3)


@pytest.mark.parametrize(
    ("path", "descriptor", "streaming", "admin"),
    PUBLIC_METHODS,
    ids=[p[0].rsplit(".", 1)[-1] for p in PUBLIC_METHODS],
)
def test_grpc_public_rpcs(
    mesh: FuzzMesh,
    client: httpx.Client,
    channel: grpc.Channel,
    path: str,
    descriptor: Any,
    streaming: bool,
    admin: bool,
) -> None:
    _ran.add("grpc")
    metadata = [("authorization", f"Bearer {mesh.admin_key}")] if admin else []

    @fuzz_settings(120)
    @given(
        message=proto_messages(descriptor, allow_model=not admin),
        mangle=st.none()
        | st.tuples(st.integers(min_value=0, max_value=64), st.binary(min_size=1, max_size=3)),
        raw=st.none() | st.binary(max_size=48),
        model_header=st.none() | st.sampled_from([MODEL, "x" * 300, "nope"]),
    )
    def fuzz(
        message: Any, mangle: tuple[int, bytes] | None, raw: bytes | None, model_header: str | None
    ) -> None:
        _limit_generation(message)
        payload = message.SerializeToString()
        if mangle is not None:
            at, junk = mangle
            payload = payload[:at] + junk + payload[at:]
        if raw is not None and mangle is None:
            payload = raw
        extra = [("x-helios-model", model_header)] if model_header is not None else []
        check_grpc(mesh, path, _call(channel, path, streaming, payload, metadata + extra))

    fuzz()


def test_grpc_internal_services_are_not_routed(mesh: FuzzMesh, channel: grpc.Channel) -> None:
    for path in (
        "/helios.v1.WorkerService/LoadModel",
        "/helios.v1.StorageService/Stat",
        "/helios.v1.RegistryService/ReadBlob",
    ):
        error = _call(channel, path, False, b"\x0a\x03a/b", [])
        assert error is not None and error.code() == grpc.StatusCode.UNIMPLEMENTED, path
        mesh.sent["grpc"] += 1
    # ImportModel is `helios pull`'s, through the front door for the admin key only.
    error = _call(channel, "/helios.v1.RegistryService/ImportModel", False, b"\x0a\x03a/b", [])
    assert error is not None and error.code() in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    mesh.sent["grpc"] += 1


# --- after everything -----------------------------------------------------------------------
def test_zz_mesh_survives(mesh: FuzzMesh, client: httpx.Client) -> None:
    """No crash, no restart, no ERROR record, bounded memory; still serving."""
    assert mesh.process.poll() is None, "helios up exited"
    gone = [
        name
        for name, pid in mesh.pids().items()
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    ]
    assert not gone, f"died (or were restarted) during the fuzz run: {gone}"
    rss = mesh.rss()
    grown = {
        name: (rss[name] - mesh.baseline_rss[name]) // (1024 * 1024)
        for name in rss
        if rss[name] - mesh.baseline_rss.get(name, rss[name]) > RSS_GROWTH_LIMIT
    }
    assert not grown, f"RSS grew by more than {RSS_GROWTH_LIMIT >> 20} MiB (MiB): {grown}"
    errors = mesh.error_records()
    assert not errors, f"{len(errors)} ERROR records, e.g. {errors[:3]}"
    health = client.get("/v1/health")
    assert health.status_code == 200, health.text
    reply = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
    print(f"fuzz inputs sent: {dict(mesh.sent)}")
    if {"chat", "completions", "estimator", "path-parameters", "admin", "any", "grpc"} <= _ran:
        total = mesh.sent["rest"] + mesh.sent["grpc"]
        assert total >= MIN_INPUTS, dict(mesh.sent)
        assert mesh.sent["grpc"] >= 1000 and mesh.sent["rest"] >= 1000, dict(mesh.sent)
