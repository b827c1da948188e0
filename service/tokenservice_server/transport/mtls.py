"""mTLS client identity: who presented which client certificate.

With ``tls.client_ca_file`` set, gRPC refuses any connection without a certificate the
CA signed. This interceptor reads the verified certificate's subject common name and
subject alternative names from the call's auth context and

- makes the identity available to the caller-authorization layer
  (:func:`current_peer_identity`, and ``Caller.peer_identity``) and to the audit trail;
- binds it to the RPC's log events (``peer_identity``);
- when ``tls.allowed_client_identities`` is set, refuses (PERMISSION_DENIED) a certificate
  whose common name or alternative names are all outside that list.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc

from tokenservice_server import log_context

__all__ = ["ClientIdentityInterceptor", "PeerIdentity", "current_peer_identity", "peer_identity"]

_identity: contextvars.ContextVar[str] = contextvars.ContextVar("peer_identity", default="")


@dataclass(frozen=True)
class PeerIdentity:
    common_name: str = ""
    alt_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The identity logged and audited: the subject CN, else the first SAN."""
        if self.common_name:
            return self.common_name
        return self.alt_names[0] if self.alt_names else ""

    def matches(self, allowed: Collection[str]) -> bool:
        return any(name in allowed for name in (self.common_name, *self.alt_names) if name)


def _texts(values: Any) -> list[str]:
    return [
        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for value in values or ()
    ]


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity:
    """The verified client certificate's names; empty without mTLS."""
    auth: dict[str, Any] = dict(context.auth_context() or {})
    common = _texts(auth.get("x509_common_name"))
    return PeerIdentity(
        common_name=common[0] if common else "",
        alt_names=tuple(_texts(auth.get("x509_subject_alternative_name"))),
    )


def current_peer_identity() -> str:
    """The mTLS identity of the running RPC ('' without a client certificate)."""
    return _identity.get()


_Behavior = Callable[..., Any]


class ClientIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Installed when mTLS is on; see the module docstring."""

    def __init__(self, allowed: Collection[str] = ()) -> None:
        self._allowed = frozenset(allowed)

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> contextvars.Token[str]:
        identity = peer_identity(context)
        log_context.bind(peer_identity=identity.name)
        if self._allowed and not identity.matches(self._allowed):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "client certificate identity not allowed"
            )
        return _identity.set(identity.name)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        admit = self._admit

        def unary(behavior: _Behavior) -> _Behavior:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = await admit(context)
                try:
                    return await behavior(request, context)
                finally:
                    _identity.reset(token)

            return wrapper

        def streaming(behavior: _Behavior) -> _Behavior:
            async def wrapper(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                token = await admit(context)
                try:
                    result = behavior(request, context)
                    if hasattr(result, "__aiter__"):
                        async for response in result:
                            yield response
                    else:
                        await result
                finally:
                    _identity.reset(token)

            return wrapper

        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **options)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                streaming(handler.stream_stream), **options
            )
        return handler
