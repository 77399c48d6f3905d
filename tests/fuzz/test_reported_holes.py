"""Issue 16 items 5-7, each as it was reported against `helios up`, reproduced no more."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from fuzz_mesh import FuzzMesh
from helios.v1 import storage_pb2
from strategies import MODEL

from runtime.limits import INFERENCE_BODY_BYTES, MAX_PROMPT_BYTES

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def http(mesh: FuzzMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.base_url, timeout=60.0) as client:
        yield client


def _chat(content: str, max_tokens: int = 2) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }


def _error(reply: httpx.Response) -> dict[str, object]:
    error = reply.json()["error"]
    assert isinstance(error, dict)
    return error


def test_item5_huge_prompts_neither_stall_streams_nor_grow_the_worker(
    mesh: FuzzMesh, http: httpx.Client
) -> None:
    """Reported: 6 parallel 15 MB prompts froze another client's stream for 32 s and the
    worker's RSS went 1.5 -> 7.4 GB and stayed."""
    assert http.post("/v1/chat/completions", json=_chat("warm up")).status_code == 200
    worker_before = mesh.rss()["worker-0"]
    gaps: list[float] = []

    def victim() -> int:
        body = {**_chat("Once upon a time", 40), "stream": True, "ignore_eos": True}
        events = 0
        with (
            httpx.Client(base_url=mesh.base_url, timeout=60.0) as own,
            own.stream("POST", "/v1/chat/completions", json=body) as reply,
        ):
            assert reply.status_code == 200
            last = time.monotonic()
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    events += 1
        return events

    # 15 MB: past the edge's body limit. Just under the prompt's byte limit: past the
    # engine's context bound, refused before tokenizing.
    bodies = [json.dumps(_chat("x" * 15_000_000)).encode()] * 3 + [
        json.dumps(_chat("y" * (MAX_PROMPT_BYTES - 1000))).encode()
    ] * 6

    def huge(body: bytes) -> tuple[int, float, str]:
        start = time.monotonic()
        with httpx.Client(base_url=mesh.base_url, timeout=60.0) as own:
            reply = own.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        return reply.status_code, time.monotonic() - start, reply.text

    with ThreadPoolExecutor(max_workers=10) as pool:
        stream = pool.submit(victim)
        time.sleep(0.3)
        results = list(pool.map(huge, bodies))
        events = stream.result(timeout=120)
    assert events >= 10
    for status, seconds, text in results:
        assert status in (400, 413), text[:300]
        assert seconds < 10, (seconds, text[:200])
        assert "xxxxxxxx" not in text and "yyyyyyyy" not in text
    assert sorted({s for s, _, _ in results}) == [400, 413]
    assert max(gaps[1:], default=0.0) < 3.0, gaps
    grown = mesh.rss()["worker-0"] - worker_before
    assert grown < 300 * MIB, f"worker RSS grew {grown // MIB} MiB"


def test_item6_big_ids_are_refused_before_they_cost_memory(
    mesh: FuzzMesh, http: httpx.Client
) -> None:
    """Reported: 8 Stat calls with a 63 MB model id took storaged from 325 MB to 3.5 GB;
    64 MiB messages everywhere; ids echoed into errors."""
    before = mesh.rss()["storaged"]
    huge_id = "m" * (63 * MIB)
    with grpc.insecure_channel(
        mesh.service_address("storaged"), options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stat = channel.unary_unary(
            "/helios.v1.StorageService/Stat",
            request_serializer=storage_pb2.StatRequest.SerializeToString,
            response_deserializer=storage_pb2.StatResponse.FromString,
        )

        def call(_: int) -> grpc.StatusCode:
            try:
                stat(storage_pb2.StatRequest(model_id=huge_id), timeout=60)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[attr-defined,no-any-return]
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(call, range(8)))
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 8
        stats = channel.unary_unary(
            "/helios.v1.StorageService/GetStats",
            request_serializer=storage_pb2.GetStatsRequest.SerializeToString,
            response_deserializer=storage_pb2.GetStatsResponse.FromString,
        )
        stats(storage_pb2.GetStatsRequest(), timeout=10)
    grown = mesh.rss()["storaged"] - before
    assert grown < 32 * MIB, f"storaged RSS grew {grown // MIB} MiB"

    # Through the front door: a 100 KB model id is the client's mistake (400, not 429),
    # and the error does not echo it.
    reply = http.post("/v1/chat/completions", json={**_chat("hi"), "model": "m" * 100_000})
    assert reply.status_code == 400, reply.text[:300]
    error = _error(reply)
    assert str(error["message"]).startswith("model:")
    assert len(reply.content) < 1000


def test_item7_bad_bytes_are_client_errors(mesh: FuzzMesh, http: httpx.Client) -> None:
    """Reported: protobuf decode errors, JSON nested 50 deep and bad UTF-8 in the path
    answered UNKNOWN / HTTP 500 with the exception text and a traceback per request; a
    30 KB header answered 429; grpc-timeout on a REST call 500/504; HEAD returned a body;
    the estimator accepted 200 MB while chat stopped at 16 MiB."""
    errors_before = len(mesh.error_records())
    with grpc.insecure_channel(mesh.grpc_address) as channel:
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/helios.v1.InferenceService/ListModels")(
                    b"\xff\xff\xff\xff\xff", timeout=10
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "cannot be decoded" in err.value.details()  # type: ignore[attr-defined]

    nested = (
        b'{"model":"'
        + MODEL.encode()
        + b'","messages":[{"role":"user","content":'
        + b"[" * 50
        + b"]" * 50
        + b'}],"max_tokens":1}'
    )
    reply = http.post(
        "/v1/chat/completions", content=nested, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    assert "nested too deeply" in str(_error(reply)["message"])

    for path in ("/v1/estimate/model/%ff%fe", "/v1/estimate/gpu-compatibility/a%c3"):
        reply = http.get(path)
        assert reply.status_code == 400, reply.text
        assert "not valid UTF-8" in str(_error(reply)["message"])

    reply = http.get("/v1/models", headers={"x-junk": "a" * 30_000})
    assert reply.status_code == 431, reply.text
    assert _error(reply)["type"] == "invalid_request_error"

    for header in ({"grpc-timeout": "1n"}, {"te": "1n"}):  # gRPC's headers, on REST
        reply = http.post("/v1/chat/completions", json=_chat("hi"), headers=header)
        assert reply.status_code == 200, reply.text

    reply = http.head("/v1/models")
    assert reply.content == b""

    # The estimator accepts no more than chat does.
    big = json.dumps({"model_id": "a" * (INFERENCE_BODY_BYTES // 2 + MIB)}).encode()
    reply = http.post(
        "/v1/estimate/memory", content=big, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413, reply.text[:300]
    reply = http.post(
        "/v1/chat/completions",
        content=json.dumps(_chat("a" * (INFERENCE_BODY_BYTES // 2 + MIB))).encode(),
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 400 and str(_error(reply)["message"]).startswith("messages")
    reply = http.post(
        "/v1/estimate/memory",
        content=b"{" + b" " * (200 * MIB) + b"}",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 413

    # No address, path or exception text in any of these; no ERROR record for any of them.
    for reply in (http.get("/v1/estimate/model/%ff"), http.post("/v1/completions", content=b"{")):
        assert not mesh.leaks(reply.text), reply.text
    assert len(mesh.error_records()) == errors_before, mesh.error_records()[errors_before:][:3]
