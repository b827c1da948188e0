"""Caller authorization for the whole server, in one place.

Every tokenservice RPC names what it needs from the caller here: nothing (the token
endpoint authenticates clients from the request body; Envoy's Check is protected by
network policy and optional mTLS), any authenticated client (the servicer then decides,
e.g. per cache namespace), or one scope. A bearer access token in the ``authorization``
metadata is resolved to the calling client; the servicer reads it with
:func:`current_caller`. Methods of ``tokenservice.v1`` missing from the table need
``tokenservice.admin``: a new RPC is closed until someone opens it deliberately.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc

from tokenservice_server import log_context
from tokenservice_server.domain import scopes
from tokenservice_server.domain.authentication import BearerAuthenticator
from tokenservice_server.domain.errors import PermissionDenied, Unauthenticated
from tokenservice_server.domain.tokens import Caller
from tokenservice_server.transport.mtls import current_peer_identity

__all__ = [
    "CallerAuthInterceptor",
    "Policy",
    "authorization_metadata",
    "current_caller",
    "optional_caller",
    "policy_for",
]

_PROTECTED_PACKAGE = "/tokenservice.v1."


@dataclass(frozen=True)
class Policy:
    needs_caller: bool
    scope: str | None = None
    reads_bearer: bool = True  # False: an authorization header is not even looked at


PUBLIC = Policy(needs_caller=False)
# The token endpoint authenticates clients from the request body only: a stale bearer
# token a channel attaches to every call must not stop a client from getting a new one.
TOKEN_ENDPOINT = Policy(needs_caller=False, reads_bearer=False)
# The servicer authenticates the caller itself, in the same round trip as its own lookup:
# resolving the bearer token here as well would cost a second round trip.
SELF_AUTHENTICATED = Policy(needs_caller=False, reads_bearer=False)
AUTHENTICATED = Policy(needs_caller=True)
ADMIN = Policy(needs_caller=True, scope=scopes.ADMIN)
AUTHORIZE = Policy(needs_caller=True, scope=scopes.AUTHORIZE)

_TOKEN = "/tokenservice.v1.TokenService/"
_POLICIES: dict[str, Policy] = {
    _TOKEN + "IssueToken": TOKEN_ENDPOINT,
    _TOKEN + "RevokeToken": PUBLIC,  # RFC 7009 client authentication, or a bearer token
    # The servicer authenticates the caller in the same round trip as the lookup;
    # callers need scope tokenservice.introspect, or may see only their own tokens.
    _TOKEN + "IntrospectToken": SELF_AUTHENTICATED,
    _TOKEN + "Authorize": AUTHORIZE,
    _TOKEN + "CreateSession": AUTHORIZE,
    _TOKEN + "GetSession": AUTHORIZE,
    _TOKEN + "ExtendSession": AUTHORIZE,
    _TOKEN + "EndSession": AUTHORIZE,
    _TOKEN + "RevokeTokens": ADMIN,
    _TOKEN + "GetTokenStats": ADMIN,
}
_SERVICE_POLICIES: dict[str, Policy] = {
    "/tokenservice.v1.ClientRegistry/": ADMIN,
    "/tokenservice.v1.CacheService/": AUTHENTICATED,  # namespace scopes checked per call
}

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def policy_for(method: str) -> Policy:
    if method in _POLICIES:
        return _POLICIES[method]
    for prefix, policy in _SERVICE_POLICIES.items():
        if method.startswith(prefix):
            return policy
    if method.startswith(_PROTECTED_PACKAGE):
        return ADMIN
    return PUBLIC  # health, reflection, ext_authz and services added by embedders


def current_caller() -> Caller:
    """The authenticated caller of the running RPC (with its mTLS identity, if any)."""
    caller = optional_caller()
    if caller is None:
        raise Unauthenticated("missing bearer token in the authorization metadata")
    return caller


def optional_caller() -> Caller | None:
    caller = _caller.get()
    if caller is not None and not caller.peer_identity:
        # Known only once the identity interceptor admitted the call, at handler time.
        identity = current_peer_identity()
        if identity:
            caller = replace(caller, peer_identity=identity)
    return caller


def authorization_metadata(metadata: Any) -> str | None:
    """The ``authorization`` value of an RPC's metadata, None if absent."""
    for key, value in metadata or ():
        if key == "authorization":
            return str(value)
    return None


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves the caller of each RPC whose policy reads the bearer token.

    A hot token (in the hot-token cache) is resolved here, in the interceptor: grpc.aio
    runs the interceptors and then the handler in the RPC's own task, so the caller set
    in ``_caller`` now is the handler's, and the handler runs unwrapped (no handler made
    per RPC, no extra frame). Any other token is resolved inside the handler, under the
    caller's deadline, and a refusal becomes the RPC's status there.
    """

    def __init__(self, authenticator: BearerAuthenticator) -> None:
        self._authenticator = authenticator
        self._policies: dict[str, Policy] = {}  # by method; only methods with a handler

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
        method = handler_call_details.method
        policy = self._policies.get(method)
        if policy is None:
            policy = self._policies[method] = policy_for(method)
        if not policy.reads_bearer:
            return handler
        authorization = authorization_metadata(handler_call_details.invocation_metadata)
        if not policy.needs_caller and authorization is None:
            return handler
        if handler.unary_unary is None:
            # Only unary RPCs carry caller credentials in this API; fail closed.
            return handler if policy is PUBLIC else _deny_streaming(handler)
        authenticator = self._authenticator
        hot = authenticator.cached_caller(authorization) if authorization is not None else None
        if hot is not None and (policy.scope is None or hot.has_scope(policy.scope)):
            _caller.set(hot)
            log_context.bind(client_id=hot.client_id)
            return handler
        behavior: Any = handler.unary_unary

        async def authorized(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # A hot caller short of the scope is known already (refused below); any
            # other token is resolved here, under the caller's deadline.
            caller = hot
            if caller is None and (authorization is not None or policy.needs_caller):
                caller = await authenticator.resolve(authorization)
            if caller is not None:
                log_context.bind(client_id=caller.client_id)
                if policy.scope is not None and not caller.has_scope(policy.scope):
                    raise PermissionDenied(f"this RPC requires scope {policy.scope}")
            token = _caller.set(caller)
            try:
                return await behavior(request, context)
            finally:
                _caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            cast("Any", authorized),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _deny_streaming(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming RPC not authorized")

    return grpc.unary_stream_rpc_method_handler(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
