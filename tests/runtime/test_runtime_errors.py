"""ErrorInterceptor: HeliosError -> its status; anything else -> logged INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from runtime_echo import SERVICE

from runtime import errors
from runtime.grpc_errors import RETRY_AFTER_METADATA, grpc_status
from runtime.interceptors import INTERNAL_MESSAGE


async def _unary_error(channel: grpc.aio.Channel, request: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Echo")(request, timeout=5)
    return err.value


async def test_ok_passes_through(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{SERVICE}/Echo")(b"hello", timeout=5) == b"hello"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (b"notfound:model llama-7b", grpc.StatusCode.NOT_FOUND, "model llama-7b"),
        (b"invalid:max_tokens < 0", grpc.StatusCode.INVALID_ARGUMENT, "max_tokens < 0"),
    ],
)
async def test_helios_error_maps_to_its_code_unary(
    channel: grpc.aio.Channel, request_: bytes, code: grpc.StatusCode, message: str
) -> None:
    err = await _unary_error(channel, request_)
    assert err.code() == code
    assert err.details() == message


def _all_error_classes(cls: type[errors.HeliosError]) -> list[type[errors.HeliosError]]:
    """The hierarchy as runtime.errors defines it (tests' own subclasses, imported by
    other tests in the same process, are not the runtime's to list), less the classes
    whose constructors take more than a message (ShedError, RelayedError, ...; test_errors
    checks their codes)."""
    defined_here = cls.__module__ == errors.__name__
    built_from_a_message = cls.__init__ is errors.HeliosError.__init__
    out = [cls] if defined_here and built_from_a_message else []
    for sub in cls.__subclasses__():
        out += _all_error_classes(sub)
    return out


@pytest.mark.parametrize("cls", _all_error_classes(errors.HeliosError), ids=lambda c: c.__name__)
async def test_every_helios_error_maps_to_its_status_code(
    channel: grpc.aio.Channel, cls: type[errors.HeliosError]
) -> None:
    err = await _unary_error(channel, f"raise:{cls.__name__}:why it failed".encode())
    assert err.code() == grpc_status(cls.code)
    assert err.details() == "why it failed"
    assert dict(err.trailing_metadata() or ()).get(RETRY_AFTER_METADATA) is None


@pytest.mark.parametrize(("retry_after_s", "header"), [("0.2", "1"), ("2.5", "3"), ("7", "7")])
async def test_retry_after_is_sent_as_a_trailer_in_whole_seconds(
    channel: grpc.aio.Channel, retry_after_s: str, header: str
) -> None:
    err = await _unary_error(channel, f"retry:{retry_after_s}:queue full".encode())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "queue full"
    assert dict(err.trailing_metadata() or ())[RETRY_AFTER_METADATA] == header


async def test_retry_after_is_sent_mid_stream(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"2:0:retry", timeout=5)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for msg in call:
            got.append(msg)
    assert got == [b"0", b"1"]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata() or ())[RETRY_AFTER_METADATA] == "4"


async def test_helios_error_mid_stream(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"3:0:notfound", timeout=5)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for msg in call:
            got.append(msg)
    assert got == [b"0", b"1", b"2"]  # what was sent before the error still arrives
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "gone mid-stream"


async def test_unexpected_error_is_internal_and_logged(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="runtime.interceptors")
    err = await _unary_error(channel, b"boom")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == INTERNAL_MESSAGE
    assert "secret" not in (err.details() or "")
    records = [r for r in caplog.records if r.name == "runtime.interceptors"]
    assert records, "the unexpected error must be logged"
    assert records[-1].exc_info is not None
    assert "RuntimeError: secret internal detail" in caplog.text
    assert "Traceback" in caplog.text
    assert f"/{SERVICE}/Echo" in records[-1].getMessage()


async def test_unexpected_error_mid_stream_is_internal(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="runtime.interceptors")
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"2:0:boom", timeout=5)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for msg in call:
            got.append(msg)
    assert got == [b"0", b"1"]
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == INTERNAL_MESSAGE
    assert "RuntimeError: secret mid-stream detail" in caplog.text


async def test_servicer_abort_is_left_alone(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="runtime.interceptors")
    err = await _unary_error(channel, b"abort")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "go away"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_client_streaming(channel: grpc.aio.Channel) -> None:
    collect = channel.stream_unary(f"/{SERVICE}/Collect")
    assert await collect(_requests(b"a", b"b"), timeout=5) == b"a,b"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(_requests(b"a", b"notfound"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such item"


async def test_bidi_streaming(channel: grpc.aio.Channel) -> None:
    chat = channel.stream_stream(f"/{SERVICE}/Chat")
    assert [m async for m in chat(_requests(b"x", b"y"), timeout=5)] == [b"x", b"y"]
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for m in chat(_requests(b"x", b"notfound", b"z"), timeout=5):
            got.append(m)
    assert got == [b"x"]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "chat partner left"


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
