"""Generic handlers built from service descriptors.

A servicer implements the methods whose capability has landed, as coroutine methods
named after the RPC; every other method of the contract answers UNIMPLEMENTED, so the
whole contract is published (and discoverable via reflection) before it is complete.
This is the only place UNIMPLEMENTED is an acceptable answer.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

__all__ = ["service_handler", "unimplemented_service"]


def _factory(method: MethodDescriptor) -> Any:
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler
    return grpc.unary_unary_rpc_method_handler


def _handler(method: MethodDescriptor, implementation: object | None) -> Any:
    request_type = GetMessageClass(method.input_type)
    response_type = GetMessageClass(method.output_type)
    behavior = getattr(implementation, method.name, None)
    if behavior is None or not inspect.iscoroutinefunction(behavior):
        details = f"{method.full_name} is not implemented yet"

        async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)

        behavior = reject
    return _factory(method)(
        behavior,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def service_handler(
    service: ServiceDescriptor, implementation: object | None
) -> grpc.GenericRpcHandler:
    """Serve ``service`` with the RPC methods ``implementation`` defines."""
    return grpc.method_handlers_generic_handler(
        service.full_name,
        {method.name: _handler(method, implementation) for method in service.methods},
    )


def unimplemented_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """A generic handler answering UNIMPLEMENTED for every method of ``service``."""
    return service_handler(service, None)
