"""Request bytes (runtime.limits, runtime.interceptors): per-method size limits checked
before parsing, per-server receive limits in grpc core, undecodable requests answered
INVALID_ARGUMENT and logged once per cause, long error messages cut."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest
from helios.v1 import inference_pb2, storage_pb2
from runtime_echo import SERVICE, register_echo

from runtime import limits
from runtime.config import ServerSettings
from runtime.errors import InvalidArgumentError
from runtime.server import start_server

PARSE = "test.v1.Parse"
# A method whose full name runtime.limits knows as an inference request.
CHAT = "helios.v1.InferenceService"


async def _parse(request: inference_pb2.CreateChatCompletionRequest, context: object) -> bytes:
    return request.params.model.encode()


async def _echo_long(request: bytes, context: object) -> bytes:
    raise InvalidArgumentError("model: unknown " + "x" * 100_000)


async def _collect(
    requests: AsyncIterator[inference_pb2.CreateChatCompletionRequest], _: object
) -> bytes:
    return b",".join([r.params.model.encode() async for r in requests])


def _register(server: grpc.aio.Server) -> Sequence[str]:
    register_echo(server)
    des = inference_pb2.CreateChatCompletionRequest.FromString
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PARSE,
                {
                    "Parse": grpc.unary_unary_rpc_method_handler(_parse, des),
                    "Long": grpc.unary_unary_rpc_method_handler(_echo_long),
                    "Collect": grpc.stream_unary_rpc_method_handler(_collect, des),
                },
            ),
            # The chat method's name, so its (large) per-method limit applies.
            grpc.method_handlers_generic_handler(
                CHAT, {"CreateChatCompletion": grpc.unary_unary_rpc_method_handler(_parse, des)}
            ),
        )
    )
    return [SERVICE, PARSE, CHAT]


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    settings = ServerSettings(service="limits", metrics_port=-1, drain_seconds=0.5)
    running = await start_server(settings, _register)
    try:
        async with grpc.aio.insecure_channel(
            running.address, options=[("grpc.max_send_message_length", -1)]
        ) as ch:
            yield ch
    finally:
        await running.stop(0)


async def _status(channel: grpc.aio.Channel, method: str, request: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(method)(request, timeout=10)
    return err.value


def _chat(model: str) -> bytes:
    request = inference_pb2.CreateChatCompletionRequest()
    request.params.model = model
    return request.SerializeToString()


async def test_a_good_message_parses(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{PARSE}/Parse")(_chat("m"), timeout=5) == b"m"


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        (b"\xff\xff\xff\xff\xff", "not a valid protobuf encoding"),
        # params (field 1) { model (field 1): b"\xff\xfe" }: a string that is not UTF-8.
        (b"\x0a\x04\x0a\x02\xff\xfe", "not valid UTF-8"),
    ],
)
async def test_undecodable_request_is_invalid_argument_logged_once(
    channel: grpc.aio.Channel, raw: bytes, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="runtime.interceptors")
    for _ in range(20):
        error = await _status(channel, f"/{PARSE}/Parse", raw)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("request cannot be decoded: ")
        assert cause in (error.details() or "")
    records = [r for r in caplog.records if r.name == "runtime.interceptors"]
    assert not [r for r in records if r.levelno >= logging.ERROR]
    warnings = [r for r in records if r.levelno == logging.WARNING and cause in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in records]
    assert warnings[0].exc_info is None  # no traceback


async def test_nesting_past_protobufs_depth_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    # messages[0].content: a google.protobuf.Value holding lists nested 200 deep, built
    # on the wire (building the Value in Python would hit the same limit).
    raw = b""
    for _ in range(200):
        list_value = b"\x0a" + _varint(len(raw)) + raw  # ListValue.values = [Value]
        raw = b"\x32" + _varint(len(list_value)) + list_value  # Value.list_value (field 6)
    message = b"\x12" + _varint(len(raw)) + raw  # ChatMessage.content (field 2)
    params = b"\x12" + _varint(len(message)) + message  # ChatCompletionParams.messages
    request = b"\x0a" + _varint(len(params)) + params
    error = await _status(channel, f"/{PARSE}/Parse", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested too deeply" in (error.details() or "")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


async def test_per_method_limit_is_checked_before_parsing(channel: grpc.aio.Channel) -> None:
    big = _chat("m" * (limits.CONTROL_REQUEST_BYTES + 10))
    # A control method refuses it (the server's core limit is the chat method's, larger)...
    error = await _status(channel, f"/{PARSE}/Parse", big)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request too large" in (error.details() or "")
    assert str(limits.CONTROL_REQUEST_BYTES) in (error.details() or "")
    # ... the chat method takes it.
    reply = await channel.unary_unary(f"/{CHAT}/CreateChatCompletion")(big, timeout=10)
    assert len(reply) == limits.CONTROL_REQUEST_BYTES + 10


async def test_core_limit_refuses_past_the_largest_method(channel: grpc.aio.Channel) -> None:
    huge = b"\x00" * (limits.INFERENCE_REQUEST_BYTES + 1)
    error = await _status(channel, f"/{CHAT}/CreateChatCompletion", huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_client_stream_with_an_undecodable_message(channel: grpc.aio.Channel) -> None:
    call = channel.stream_unary(f"/{PARSE}/Collect")

    async def requests() -> AsyncIterator[bytes]:
        yield _chat("a")
        yield b"\xff\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(requests(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(iter([_chat("a"), _chat("b")]), timeout=10) == b"a,b"


async def test_untyped_methods_get_the_size_check_only(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{SERVICE}/Echo")(b"\xff\xfe", timeout=5) == b"\xff\xfe"
    error = await _status(channel, f"/{SERVICE}/Echo", b"a" * (limits.CONTROL_REQUEST_BYTES + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_long_error_messages_are_cut(channel: grpc.aio.Channel) -> None:
    error = await _status(channel, f"/{PARSE}/Long", b"")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("model: unknown xxx")
    assert len(details) <= limits.MAX_ERROR_MESSAGE_CHARS


async def test_storaged_server_receives_control_messages_only(tmp_path: Path) -> None:
    """The reported hole: 63 MB Stat ids reached storaged's servicer. A server hosting only
    control RPCs refuses a large message in grpc core, before Python holds it."""
    assert limits.server_receive_limit(["helios.v1.StorageService"]) == (
        limits.CONTROL_REQUEST_BYTES
    )
    reached: list[int] = []

    async def stat(request: storage_pb2.StatRequest, context: object) -> storage_pb2.StatResponse:
        reached.append(len(request.model_id))
        return storage_pb2.StatResponse()

    def register(server: grpc.aio.Server) -> Sequence[str]:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "helios.v1.StorageService",
                    {
                        "Stat": grpc.unary_unary_rpc_method_handler(
                            stat,
                            storage_pb2.StatRequest.FromString,
                            storage_pb2.StatResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        return ["helios.v1.StorageService"]

    settings = ServerSettings(service="storaged", metrics_port=-1, drain_seconds=0.5)
    running = await start_server(settings, register)
    try:
        async with grpc.aio.insecure_channel(running.address) as ch:
            stat_call = ch.unary_unary(
                "/helios.v1.StorageService/Stat",
                request_serializer=storage_pb2.StatRequest.SerializeToString,
                response_deserializer=storage_pb2.StatResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stat_call(storage_pb2.StatRequest(model_id="m" * (1 << 20)), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await stat_call(storage_pb2.StatRequest(model_id="org/model"), timeout=10)
    finally:
        await running.stop(0)
    assert reached == [len("org/model")]


def test_only_control_servers_keep_the_default_window() -> None:
    """grpc core takes in bytes of an oversized message before refusing it, as many as the
    stream's window allows; the BDP probe grows that window. A control-only server keeps
    HTTP/2's 64 KiB (tests/fuzz/test_reported_holes: storaged's RSS under 8 x 63 MB ids);
    a server that takes prompts keeps the probe."""
    from runtime.server import _receive_options

    storaged = dict(_receive_options(["helios.v1.StorageService"]))
    assert storaged == {
        "grpc.max_receive_message_length": limits.CONTROL_REQUEST_BYTES,
        "grpc.http2.bdp_probe": 0,
    }
    worker = dict(_receive_options(["helios.v1.WorkerService", "helios.v1.InferenceService"]))
    assert worker == {"grpc.max_receive_message_length": limits.INFERENCE_REQUEST_BYTES}


def test_limits_table() -> None:
    from registry.upload import MAX_UPLOAD_CHUNK

    assert limits.request_limit("/helios.v1.StorageService/Stat") == limits.CONTROL_REQUEST_BYTES
    assert limits.request_limit("/helios.v1.WorkerService/Heartbeat") == (
        limits.HEARTBEAT_REQUEST_BYTES
    )
    assert limits.request_limit("/helios.v1.AdminService/GetHealth") == (
        limits.CONTROL_REQUEST_BYTES
    )
    assert limits.request_limit("/helios.v1.InferenceService/StreamChatCompletion") == (
        limits.INFERENCE_REQUEST_BYTES
    )
    assert limits.request_limit("/helios.v1.RegistryService/UploadModel") > MAX_UPLOAD_CHUNK
    # No REST body the edge admits becomes a gRPC message its server refuses.
    assert limits.INFERENCE_REQUEST_BYTES >= 2 * limits.INFERENCE_BODY_BYTES
    assert limits.ESTIMATOR_REQUEST_BYTES >= 2 * limits.ESTIMATOR_BODY_BYTES
    assert limits.ESTIMATOR_BODY_BYTES <= limits.INFERENCE_BODY_BYTES
    assert limits.INFERENCE_BODY_BYTES > limits.MAX_PROMPT_BYTES
    assert (
        limits.server_receive_limit(["helios.v1.WorkerService", "helios.v1.InferenceService"])
        == limits.INFERENCE_REQUEST_BYTES
    )


def test_quote_is_bounded() -> None:
    assert limits.quote("abc") == "'abc'"
    quoted = limits.quote("x" * 10_000)
    assert len(quoted) < 120
    assert "10000 characters" in quoted


def test_grpc_invalid_encoding_records_are_rate_limited() -> None:
    """grpc logs an ERROR with a traceback per request with non-UTF-8 metadata; the
    runtime turns them into one WARNING a minute."""
    import io
    import json

    from runtime.logging import configure_logging

    stream = io.StringIO()
    configure_logging("limits", "INFO", "json", stream=stream)
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    try:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    except UnicodeDecodeError:
        for _ in range(50):
            grpc_log.exception("Invalid encoding on %s", b"caf\xe9")
    grpc_log.error("something else")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["level"] for r in records] == ["WARNING", "ERROR"]
    assert "exc_info" not in records[0]
