"""Rate limits of the token endpoint (``TokenService/IssueToken``), per client and peer IP.

An interceptor rather than a line in the servicer: the limit is counted before anything
else happens to the request (no secret verification, no token write for a refused
request), and the servicer stays about OAuth. A refusal is the domain's ``RateLimited``,
which the observability interceptor turns into RESOURCE_EXHAUSTED with a
``google.rpc.RetryInfo`` saying when to retry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import unquote

import grpc

from tokenservice_server.domain.errors import RateLimited
from tokenservice_server.domain.rate_limiting import TokenEndpointThrottle
from tokenservice_server.metrics import ServerMetrics

__all__ = ["ISSUE_TOKEN_METHOD", "TokenRateLimitInterceptor", "peer_ip"]

ISSUE_TOKEN_METHOD = "/tokenservice.v1.TokenService/IssueToken"


def peer_ip(peer: str | None) -> str:
    """The IP of a grpc peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``, maybe
    percent-encoded); '' for unix sockets and anything unparseable."""
    family, _, rest = unquote(peer or "").partition(":")
    if family not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


class TokenRateLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, throttle: TokenEndpointThrottle, metrics: ServerMetrics) -> None:
        self._throttle = throttle
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.unary_unary is None
            or handler_call_details.method != ISSUE_TOKEN_METHOD
        ):
            return handler
        behavior: Any = handler.unary_unary
        throttle, metrics = self._throttle, self._metrics

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await throttle.admit(str(request.client_id), peer_ip(context.peer()))
            except RateLimited as refused:
                metrics.rate_limited.labels(bucket=refused.limited_by).inc()
                raise
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            cast("Any", limited),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
