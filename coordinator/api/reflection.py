"""Server reflection under both names tools ask for: grpc.reflection.v1 and v1alpha.

grpcio-reflection serves only v1alpha; current tools (grpcurl, Postman, @grpc/reflection) ask
for v1 first. The two protocols are the same messages, field for field, under another package,
so v1 is served by the v1alpha servicer with the v1alpha message classes, and its descriptor
(for clients that describe the reflection service itself) is v1alpha's renamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package


def _renamed(type_name: str) -> str:
    prefix = f".{_V1ALPHA_PACKAGE}."
    return f".{V1_PACKAGE}.{type_name[len(prefix) :]}" if type_name.startswith(prefix) else type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if field.HasField("type_name"):  # message and enum fields only
                field.type_name = _renamed(field.type_name)
        _rename_messages(message.nested_type)


def add_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Put grpc/reflection/v1/reflection.proto (v1alpha's file under the v1 package) in the pool."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.ClearField("options")
    _rename_messages(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = _renamed(method.input_type), _renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: Any) -> None:
    """Serve reflection v1alpha and v1 on `server` (a grpc.aio.Server, or what stands for one when
    handlers are added: api.server.GenericOnly), listing `service_names` and both reflections."""
    add_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # v1alpha
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
