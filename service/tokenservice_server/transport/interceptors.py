"""Cross-cutting RPC concerns: metrics, one log event per RPC, and the error safety net.

Every handler is wrapped once here, so servicers stay thin: they raise domain errors
or abort with a status, and this layer makes sure that

- every RPC is counted (``grpc_server_*``) and logged with method, code and latency;
- a domain error reaches the caller as its status code plus one ErrorInfo;
- an unexpected exception reaches the caller as INTERNAL with no traceback or message
  text (the traceback goes to the server log);
- a lost Redis connection reaches the caller as UNAVAILABLE, which clients may retry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenservice_server import log_context
from tokenservice_server.domain.errors import BackendUnavailable, DomainError
from tokenservice_server.logging import enabled_for, get_logger
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.storage.retry import retry_deadline
from tokenservice_server.transport.errors import abort_with_domain_error

__all__ = ["REQUEST_ID_METADATA", "ObservabilityInterceptor"]

REQUEST_ID_METADATA = "x-request-id"
_QUIET_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
_MAX_REQUEST_ID = 128

_log = get_logger("tokenservice.rpc")

_Behavior = Callable[..., Any]

#: Redis error replies that mean "not now" during a failover or restart, not a bug: the
#: node was demoted (READONLY), lost its replicas (NOREPLICAS), lost its master
#: (MASTERDOWN) or is loading its data set (LOADING).
_TRANSIENT_REPLIES = ("READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING", "TRYAGAIN")
#: RetryInfo sent with "storage temporarily unavailable" (about one failover).
_STORAGE_RETRY_AFTER = 1.0


def _storage_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return True
    return isinstance(exc, RedisResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def _split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service or "unknown", method or "unknown"


def _request_id(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            cleaned = value.strip()[:_MAX_REQUEST_ID]
            if cleaned.isprintable() and cleaned:
                return cleaned
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID (4 us).
    return os.urandom(16).hex()


def _final_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    # The stubs promise a StatusCode; at run time it is None until a handler sets one.
    code: object = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    # grpc.aio hands back the raw integer when a handler called set_code with one.
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN


class _MethodMetrics:
    """The metric children of one method, looked up once: ``labels(**...)`` takes a lock
    and builds its key on every call, which showed in profiles of the hot path
    (docs/performance.md)."""

    def __init__(self, metrics: ServerMetrics, grpc_type: str, full_method: str) -> None:
        service, method = _split_method(full_method)
        self.labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}
        self.quiet = service in _QUIET_SERVICES
        self._metrics = metrics
        self.started = metrics.started.labels(**self.labels)
        self.handling = metrics.handling_seconds.labels(**self.labels)
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._metrics.handled.labels(**self.labels, grpc_code=code)
            self._handled[code] = child
        return child

    def sent(self) -> Any:
        return self._metrics.msg_sent.labels(**self.labels)  # streaming only: not cached


class _RpcScope:
    """Timing, counting and logging of one RPC."""

    def __init__(
        self,
        method: _MethodMetrics,
        full_method: str,
        request_id: str,
    ) -> None:
        self.method = method
        self.full_method = full_method
        self.request_id = request_id
        self.quiet = self.method.quiet
        self.started_at = time.perf_counter()
        self.method.started.inc()

    async def handle_exception(
        self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Turn an exception that escaped a handler into a clean status (always raises)."""
        if isinstance(exc, DomainError):
            await abort_with_domain_error(context, exc)
        if _storage_unavailable(exc):
            _log.warning("storage_unavailable", method=self.full_method, error=type(exc).__name__)
            await abort_with_domain_error(
                context,
                BackendUnavailable(
                    "storage temporarily unavailable", retry_after=_STORAGE_RETRY_AFTER
                ),
            )
        _log.exception("unhandled_error", method=self.full_method, request_id=self.request_id)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def finish(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        elapsed = time.perf_counter() - self.started_at
        code = _final_code(context)
        self.method.handled(code.name).inc()
        self.method.handling.observe(elapsed)
        quiet = self.quiet and code is grpc.StatusCode.OK
        if not enabled_for(logging.DEBUG if quiet else logging.INFO):
            return  # filtered out anyway: skip binding the logger and reading the peer
        log = _log.debug if quiet else _log.info
        log(
            "rpc",
            method=self.full_method,
            code=code.name,
            latency_ms=round(elapsed * 1000, 3),
            request_id=self.request_id,
            peer=context.peer(),
        )


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler with metrics, logging and the exception safety net."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        # Bounded: only methods a handler was found for get here (unknown ones return early).
        self._methods: dict[tuple[str, str], _MethodMetrics] = {}

    def _method_metrics(self, grpc_type: str, full_method: str) -> _MethodMetrics:
        found = self._methods.get((grpc_type, full_method))
        if found is None:
            found = _MethodMetrics(self._metrics, grpc_type, full_method)
            self._methods[grpc_type, full_method] = found
        return found

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # The RPC's log fields start here: the interceptors after this one and the
        # handler run in the RPC's own task, and may add to them.
        request_id = _request_id(handler_call_details.invocation_metadata)
        log_context.start_rpc(request_id)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        method_metrics = self._method_metrics

        def scope(grpc_type: str) -> _RpcScope:
            return _RpcScope(method_metrics(grpc_type, method), method, request_id)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, scope, "unary"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(handler.unary_stream, scope, "server_stream"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, scope, "client_stream"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_streaming(handler.stream_stream, scope, "bidi_stream"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(
    behavior: _Behavior, scope: Callable[[str], _RpcScope], grpc_type: str
) -> _Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc = scope(grpc_type)
        try:
            # Storage retries end before the caller's deadline (storage/retry.py).
            with retry_deadline(context.time_remaining()):
                return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # the safety net: never leak a traceback to the caller
            await rpc.handle_exception(exc, context)
            raise  # unreachable: handle_exception always aborts
        finally:
            rpc.finish(context)

    return wrapper


def _wrap_streaming(
    behavior: _Behavior, scope: Callable[[str], _RpcScope], grpc_type: str
) -> _Behavior:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        rpc = scope(grpc_type)
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    rpc.method.sent().inc()
                    yield response
            else:
                # A handler that writes with context.write() and returns None.
                await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await rpc.handle_exception(exc, context)
            raise
        finally:
            rpc.finish(context)

    return wrapper
