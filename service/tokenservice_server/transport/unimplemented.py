"""Handlers for RPCs whose capability has not landed yet.

Built from the service descriptors, so a contract can be published (and discovered via
reflection) before its implementation exists. This is the only place UNIMPLEMENTED is
an acceptable answer; each capability replaces its service's entry here.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

__all__ = ["unimplemented_service"]


def _handler(method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    request_type = GetMessageClass(method.input_type)
    response_type = GetMessageClass(method.output_type)
    details = f"{method.full_name} is not implemented yet"

    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)

    factory: Any
    if method.client_streaming and method.server_streaming:
        factory = grpc.stream_stream_rpc_method_handler
    elif method.client_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif method.server_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    handler: grpc.RpcMethodHandler[Any, Any] = factory(
        reject,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )
    return handler


def unimplemented_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """A generic handler answering UNIMPLEMENTED for every method of ``service``."""
    return grpc.method_handlers_generic_handler(
        service.full_name, {method.name: _handler(method) for method in service.methods}
    )
