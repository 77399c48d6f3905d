"""Serve a contract whose implementation has not landed yet.

Every RPC of the service answers UNIMPLEMENTED with a message that says why, so clients
get a clear status (not INTERNAL, not a hang) and health/reflection already work. The
generated base servicers are not used for this: they raise NotImplementedError, which
any error mapping would have to special-case.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from runtime.config import add_server_arguments, settings_from_args
from runtime.server import Register, run


def _method_handler(method: MethodDescriptor, reason: str) -> grpc.RpcMethodHandler:
    message = f"{method.containing_service.name}.{method.name} is not implemented yet: {reason}"
    deserialize = GetMessageClass(method.input_type).FromString

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield  # pragma: no cover - unreachable; makes this an async generator

    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client-streaming placeholders are not supported")
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, request_deserializer=deserialize)
    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserialize)


def unimplemented_handler(service: ServiceDescriptor, reason: str) -> grpc.GenericRpcHandler:
    """A handler answering UNIMPLEMENTED (with ``reason``) for every RPC of ``service``."""
    return grpc.method_handlers_generic_handler(
        service.full_name, {m.name: _method_handler(m, reason) for m in service.methods}
    )


def serve_unimplemented(
    service: ServiceDescriptor, key: str, reason: str, argv: Sequence[str] | None = None
) -> None:
    """Entry point of a service process whose contract is served as UNIMPLEMENTED."""
    parser = argparse.ArgumentParser(prog=f"helios-{key}", description=service.full_name)
    add_server_arguments(parser, key)
    settings = settings_from_args(parser.parse_args(argv), key)

    async def build() -> tuple[Register, None]:
        def register(server: grpc.aio.Server) -> list[str]:
            server.add_generic_rpc_handlers((unimplemented_handler(service, reason),))
            return [service.full_name]

        return register, None

    run(settings, build)
