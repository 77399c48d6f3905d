"""gRPC server reflection as current tools expect it: both ``grpc.reflection.v1`` (what
grpcurl, Postman and grpcui try first) and ``grpc.reflection.v1alpha``, and every
method's symbol resolvable (``grpcurl describe pkg.Service.Method``).

grpcio-reflection serves v1alpha only, and its descriptor pool finds services, messages
and fields by name but not methods ("Symbol not found"). v1 is the same protocol under
another package name (its messages are field for field v1alpha's), so one servicer
answers both: the v1 method is registered with v1alpha's (wire-identical) message
codecs, and v1's file descriptor (v1alpha's renamed) is added to the default pool so
that reflection can describe the v1 service too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_grpc

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def _v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1's reflection.proto: v1alpha's with the package (and its type names) renamed."""
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    old_package = alpha.package
    v1 = descriptor_pb2.FileDescriptorProto.FromString(alpha.SerializeToString())
    v1.name = _V1_FILE
    v1.package = V1_PACKAGE
    v1.options.ClearField("deprecated")
    v1.options.java_package = "io.grpc.reflection.v1"
    v1.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{old_package}.", f".{V1_PACKAGE}.")

    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields; scalars have none
                field.type_name = renamed(field.type_name)
    for service in v1.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return v1


def _ensure_v1_in_pool(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.AddSerializedFile(_v1_file_descriptor().SerializeToString())


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[name-defined]
    """grpcio-reflection's servicer that also resolves a method's symbol
    (``pkg.Service.Method``) to the file of its service."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        answer = super()._file_containing_symbol(request, fully_qualified_name)
        if not answer.HasField("error_response"):
            return answer
        service, _, method = fully_qualified_name.rpartition(".")
        try:
            found = self._pool.FindServiceByName(service)
        except KeyError:
            return answer
        if method not in found.methods_by_name:
            return answer
        return super()._file_containing_symbol(request, service)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both
    reflection services."""
    pool = descriptor_pool.Default()
    _ensure_v1_in_pool(pool)
    names = dict.fromkeys((*service_names, V1_SERVICE, V1ALPHA_SERVICE))
    servicer = ReflectionServicer(tuple(names))
    reflection_grpc.add_ServerReflectionServicer_to_server(servicer, server)

    def info(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return servicer.ServerReflectionInfo(requests, context)

    handler = grpc.stream_stream_rpc_method_handler(
        info,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {_METHOD: handler}),)
    )
