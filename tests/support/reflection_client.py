"""A gRPC reflection client as tools use it (grpcurl list / describe), for tests: lists
the services over v1 or v1alpha and resolves every method's descriptor."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@dataclass(frozen=True)
class Described:
    services: list[str]
    # "pkg.Service.Method" -> (input type, output type) for every method of every service
    methods: dict[str, tuple[str, str]]
    # each method's own symbol, as `grpcurl describe pkg.Service.Method` asks it
    method_files: dict[str, str]


def list_services_v1(channel: grpc.Channel) -> list[str]:
    """ListServices over grpc.reflection.v1 (its messages are v1alpha's, field for field)."""
    call = channel.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(call(iter([request]), timeout=10))
    return [s.name for s in reply.list_services_response.service]


def _file_of_symbol(channel: grpc.Channel, symbol: str) -> str:
    call = channel.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (reply,) = list(call(iter([request]), timeout=10))
    if reply.HasField("error_response"):
        return f"error {reply.error_response.error_code}"
    return "ok"


def describe_all(address: str, skip: frozenset[str] = frozenset()) -> Described:
    """Every service the server lists (v1alpha, as the Python client speaks it), every
    method's input and output resolved, and every method's own symbol asked over v1;
    ``skip``: services not to describe. Blocking: call it in a thread from async tests."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        services = list(database.get_services())
        methods = {}
        for name in services:
            if name in skip:
                continue
            service = pool.FindServiceByName(name)
            for method in service.methods:
                methods[method.full_name] = (
                    method.input_type.full_name,
                    method.output_type.full_name,
                )
        method_files = {name: _file_of_symbol(channel, name) for name in methods}
    return Described(services, methods, method_files)
