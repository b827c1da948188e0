"""Generic handlers built from service descriptors.

A servicer implements the methods whose capability has landed, as coroutine methods
named after the RPC; every other method of the contract answers UNIMPLEMENTED, so the
whole contract is published (and discoverable via reflection) before it is complete.
This is the only place UNIMPLEMENTED is an acceptable answer.

Bytes that are not a valid request message (corrupt wire format, bad UTF-8 in a string)
get INVALID_ARGUMENT here: left to grpcio, a failing deserializer answers UNKNOWN with
the parser's exception text and logs a traceback (docs/hostile-input.md).
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

__all__ = ["serialized_response", "service_handler", "unimplemented_service"]

_T = TypeVar("_T")


def serialized_response(method: _T) -> _T:
    """Mark a servicer method that returns its response already serialized (``bytes``):
    one whose answers repeat (ext_authz's Check) keeps them serialized instead of having
    grpc serialize the same message on every call."""
    method.__serialized_response__ = True  # type: ignore[attr-defined]
    return method


def _factory(method: MethodDescriptor) -> Any:
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler
    return grpc.unary_unary_rpc_method_handler


class _MalformedRequest:
    """What the deserializer hands on instead of raising, so the RPC fails cleanly."""


_MALFORMED = _MalformedRequest()


def _lenient(parse: Any) -> Any:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _MALFORMED

    return deserialize


def _refusing_malformed(behavior: Any) -> Any:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")
        return await behavior(request, context)

    return checked


def _handler(method: MethodDescriptor, implementation: object | None) -> Any:
    request_type = GetMessageClass(method.input_type)
    response_type = GetMessageClass(method.output_type)
    behavior = getattr(implementation, method.name, None)
    if behavior is None or not inspect.iscoroutinefunction(behavior):
        details = f"{method.full_name} is not implemented yet"

        async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)

        behavior = reject
    parse = request_type.FromString
    # grpc sends a response as it is when there is no serializer.
    serialize = (
        None
        if getattr(behavior, "__serialized_response__", False)
        else response_type.SerializeToString
    )
    if not method.client_streaming and not method.server_streaming:
        behavior, parse = _refusing_malformed(behavior), _lenient(parse)
    return _factory(method)(behavior, request_deserializer=parse, response_serializer=serialize)


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
