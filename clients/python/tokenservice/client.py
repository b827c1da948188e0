"""Typed clients for tokenservice: asyncio (``grpc.aio``) and blocking (``grpc``).

Both own one channel with a stub per service (``tokens``, ``clients``, ``cache``) and
typed methods for the common calls. Every call made through a client, stub calls
included, goes through one call policy:

* a deadline: ``timeout`` seconds (default 5) unless the call passes its own;
* retries on ``UNAVAILABLE`` only, with exponential backoff and jitter, bounded by
  :class:`RetryPolicy` attempts and never past the call's deadline;
* with a ``token_source``, ``authorization: Bearer <token>`` metadata on every call
  except ``TokenService.IssueToken`` (which authenticates the client from the request)
  and calls that already carry ``authorization`` metadata.

Errors follow ``proto/tokenservice/v1/errors.proto`` (a gRPC status with one
``google.rpc.ErrorInfo`` of domain ``tokenservice``)::

    async with AsyncTokenServiceClient("127.0.0.1:50051") as client:
        try:
            response = await client.issue_client_credentials("my-service", secret)
        except grpc.aio.AioRpcError as exc:
            if error_reason(exc) == "INVALID_CLIENT":
                ...
"""

# `timeout` parameters are gRPC deadlines passed to the call, as in the gRPC stubs.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from tokenservice.token_source import AsyncTokenSource, SyncTokenSource
from tokenservice.v1 import (
    cache_service_pb2,
    cache_service_pb2_grpc,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "AsyncTokenServiceClient",
    "RetryPolicy",
    "SyncTokenServiceClient",
    "TokenServiceClient",
    "error_info",
    "error_reason",
]

#: ``google.rpc.ErrorInfo.domain`` of every error tokenservice raises.
ERROR_DOMAIN = "tokenservice"

#: Deadline in seconds of a call that does not pass its own ``timeout``.
DEFAULT_TIMEOUT = 5.0

# Trailer in which gRPC carries the serialized google.rpc.Status with its details.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

# The one status worth retrying: the server (or the path to it) is briefly unavailable.
_RETRYABLE = grpc.StatusCode.UNAVAILABLE

# Methods that take no caller credentials: IssueToken authenticates the client itself.
_NO_CALLER_AUTH = frozenset({"/tokenservice.v1.TokenService/IssueToken"})

# Floor for the timeout of an attempt, so a spent deadline still ends in a real
# DEADLINE_EXCEEDED from gRPC rather than a call without any deadline.
_MIN_ATTEMPT_TIMEOUT = 0.001

Metadata = Sequence[tuple[str, str | bytes]]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls that fail with ``UNAVAILABLE`` are retried; no other code is retried.

    Attempt ``n`` (from 1) that fails is followed, if attempts remain, by a pause of
    ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``. A pause that would end past the
    call's deadline is not taken: the call fails with its last ``UNAVAILABLE``.
    ``RetryPolicy(max_attempts=1)`` disables retries.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        # Jitter spreads out clients that failed together; not a security use of random.
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311


def _check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    return timeout


def _method_name(method: str | bytes) -> str:
    # grpc.aio hands interceptors the method as bytes, grpc as str.
    return method.decode() if isinstance(method, bytes) else method


def _needs_bearer(method: str | bytes, metadata: Metadata) -> bool:
    if _method_name(method) in _NO_CALLER_AUTH:
        return False
    return not any(key.lower() == "authorization" for key, _ in metadata)


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


class _AsyncCallPolicy(grpc.aio.UnaryUnaryClientInterceptor):
    """Deadline, UNAVAILABLE retries and bearer metadata for every unary call."""

    def __init__(
        self, timeout: float, retry: RetryPolicy, token_source: AsyncTokenSource | None
    ) -> None:
        self.timeout = timeout
        self.retry = retry
        self.token_source = token_source

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Request],
            Awaitable[grpc.aio.UnaryUnaryCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Request,
    ) -> _Response | grpc.aio.UnaryUnaryCall[_Request, _Response]:
        timeout = client_call_details.timeout
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        method = cast("str | bytes", client_call_details.method)
        attempt = 1
        while True:
            metadata = list(client_call_details.metadata or ())
            source = self.token_source
            if source is not None and _needs_bearer(method, metadata):
                metadata.append(_bearer(await source.token()))
            details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                max(deadline - time.monotonic(), _MIN_ATTEMPT_TIMEOUT),
                grpc.aio.Metadata.from_tuple(metadata),
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            try:
                code = await call.code()
            except asyncio.CancelledError:
                # The caller gave up on the call while it was in flight: end the RPC too.
                call.cancel()
                raise
            if attempt >= self.retry.max_attempts or code != _RETRYABLE:
                return call
            pause = self.retry.backoff(attempt)
            if time.monotonic() + pause >= deadline:
                return call
            await asyncio.sleep(pause)
            attempt += 1


class AsyncTokenServiceClient:
    """An asyncio client for tokenservice with deadlines, retries and bearer credentials.

    ``tokens`` is the TokenService stub, ``clients`` the ClientRegistry stub and
    ``cache`` the CacheService stub; the typed methods cover the common calls. Stub
    calls get the same call policy as the typed methods (see the module docstring).
    The client owns its channel: close it, or use ``async with``. Create it inside a
    running event loop.
    """

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        options: Sequence[tuple[str, str | int]] = (),
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token_source: AsyncTokenSource | None = None,
    ) -> None:
        """Open a channel to ``target`` ("host:port"): TLS with ``credentials``, else plaintext.

        ``timeout`` is the default deadline of a call in seconds; ``retry`` the retry
        policy (default :class:`RetryPolicy()`); ``token_source`` supplies bearer tokens
        (it may also be set later through the ``token_source`` attribute).
        """
        self._policy = _AsyncCallPolicy(
            _check_timeout(timeout), retry or RetryPolicy(), token_source
        )
        interceptors = [self._policy]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=list(options), interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=list(options), interceptors=interceptors
            )
        self.tokens = token_service_pb2_grpc.TokenServiceStub(self.channel)
        self.clients = client_registry_pb2_grpc.ClientRegistryStub(self.channel)
        self.cache = cache_service_pb2_grpc.CacheServiceStub(self.channel)

    @classmethod
    def from_target(
        cls,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        options: Sequence[tuple[str, str | int]] = (),
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token_source: AsyncTokenSource | None = None,
    ) -> Self:
        """The same as the constructor (kept for existing callers)."""
        return cls(
            target,
            credentials,
            options=options,
            timeout=timeout,
            retry=retry,
            token_source=token_source,
        )

    @property
    def token_source(self) -> AsyncTokenSource | None:
        """Source of the bearer token sent with every call except IssueToken."""
        return self._policy.token_source

    @token_source.setter
    def token_source(self, source: AsyncTokenSource | None) -> None:
        self._policy.token_source = source

    async def issue_client_credentials(
        self,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> token_service_pb2.IssueTokenResponse:
        """IssueToken with the client_credentials grant; ``scope`` None asks for all allowed."""
        return await self.tokens.IssueToken(
            _client_credentials_request(client_id, client_secret, scope),
            timeout=timeout,
            metadata=metadata,
        )

    async def introspect(
        self,
        token: str,
        *,
        token_type_hint: token_service_pb2.TokenKind.ValueType = (
            token_service_pb2.TOKEN_KIND_UNSPECIFIED
        ),
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> token_service_pb2.IntrospectTokenResponse:
        """IntrospectToken (RFC 7662): whether ``token`` is active, and its metadata."""
        return await self.tokens.IntrospectToken(
            token_service_pb2.IntrospectTokenRequest(token=token, token_type_hint=token_type_hint),
            timeout=timeout,
            metadata=metadata,
        )

    async def revoke(
        self,
        token: str,
        *,
        token_type_hint: token_service_pb2.TokenKind.ValueType = (
            token_service_pb2.TOKEN_KIND_UNSPECIFIED
        ),
        client_id: str = "",
        client_secret: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """RevokeToken (RFC 7009); the client is the bearer's unless ``client_id`` is given."""
        await self.tokens.RevokeToken(
            token_service_pb2.RevokeTokenRequest(
                token=token,
                token_type_hint=token_type_hint,
                client_id=client_id,
                client_secret=client_secret,
            ),
            timeout=timeout,
            metadata=metadata,
        )

    async def cache_get(
        self,
        namespace: str,
        key: str,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.GetValueResponse:
        """CacheService.GetValue; ``found`` tells a hit from a miss."""
        return await self.cache.GetValue(
            cache_service_pb2.GetValueRequest(namespace=namespace, key=key),
            timeout=timeout,
            metadata=metadata,
        )

    async def cache_set(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.SetValueResponse:
        """CacheService.SetValue; ``ttl_seconds`` None means the server default."""
        return await self.cache.SetValue(
            _set_value_request(namespace, key, value, ttl_seconds),
            timeout=timeout,
            metadata=metadata,
        )

    async def cache_delete(
        self,
        namespace: str,
        key: str,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.DeleteValueResponse:
        """CacheService.DeleteValue; ``deleted`` is false when there was no live value."""
        return await self.cache.DeleteValue(
            cache_service_pb2.DeleteValueRequest(namespace=namespace, key=key),
            timeout=timeout,
            metadata=metadata,
        )

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; in-flight calls get ``grace`` seconds to finish."""
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


#: The asyncio client under its original name.
TokenServiceClient = AsyncTokenServiceClient


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        base: grpc.ClientCallDetails,
        timeout: float,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self.method = base.method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = getattr(base, "compression", None)


class _SyncCallPolicy(grpc.UnaryUnaryClientInterceptor):
    """The blocking twin of :class:`_AsyncCallPolicy`."""

    def __init__(
        self, timeout: float, retry: RetryPolicy, token_source: SyncTokenSource | None
    ) -> None:
        self.timeout = timeout
        self.retry = retry
        self.token_source = token_source

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Request], Any],
        client_call_details: grpc.ClientCallDetails,
        request: _Request,
    ) -> Any:
        timeout = client_call_details.timeout
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        method = cast("str | bytes", client_call_details.method)
        attempt = 1
        while True:
            metadata = list(client_call_details.metadata or ())
            source = self.token_source
            if source is not None and _needs_bearer(method, metadata):
                metadata.append(_bearer(source.token()))
            details = _SyncCallDetails(
                client_call_details,
                max(deadline - time.monotonic(), _MIN_ATTEMPT_TIMEOUT),
                tuple(metadata),
            )
            # A grpc.Call that is also a Future; code() waits for the outcome.
            outcome = continuation(details, request)
            if attempt >= self.retry.max_attempts or outcome.code() != _RETRYABLE:
                return outcome
            pause = self.retry.backoff(attempt)
            if time.monotonic() + pause >= deadline:
                return outcome
            time.sleep(pause)
            attempt += 1


class SyncTokenServiceClient:
    """The blocking twin of :class:`AsyncTokenServiceClient` (a ``grpc`` channel).

    Same stubs, typed methods and call policy; retry pauses use ``time.sleep``. Failed
    calls raise ``grpc.RpcError`` (also a ``grpc.Call``). Close it, or use ``with``.
    """

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        options: Sequence[tuple[str, str | int]] = (),
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token_source: SyncTokenSource | None = None,
    ) -> None:
        """Open a channel to ``target``; arguments as for :class:`AsyncTokenServiceClient`."""
        self._policy = _SyncCallPolicy(
            _check_timeout(timeout), retry or RetryPolicy(), token_source
        )
        if credentials is None:
            self._raw_channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._raw_channel = grpc.secure_channel(target, credentials, options=list(options))
        self.channel = grpc.intercept_channel(self._raw_channel, self._policy)
        self.tokens = token_service_pb2_grpc.TokenServiceStub(self.channel)
        self.clients = client_registry_pb2_grpc.ClientRegistryStub(self.channel)
        self.cache = cache_service_pb2_grpc.CacheServiceStub(self.channel)

    @property
    def token_source(self) -> SyncTokenSource | None:
        """Source of the bearer token sent with every call except IssueToken."""
        return self._policy.token_source

    @token_source.setter
    def token_source(self, source: SyncTokenSource | None) -> None:
        self._policy.token_source = source

    def issue_client_credentials(
        self,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> token_service_pb2.IssueTokenResponse:
        """IssueToken with the client_credentials grant; ``scope`` None asks for all allowed."""
        return self.tokens.IssueToken(
            _client_credentials_request(client_id, client_secret, scope),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def introspect(
        self,
        token: str,
        *,
        token_type_hint: token_service_pb2.TokenKind.ValueType = (
            token_service_pb2.TOKEN_KIND_UNSPECIFIED
        ),
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> token_service_pb2.IntrospectTokenResponse:
        """IntrospectToken (RFC 7662): whether ``token`` is active, and its metadata."""
        return self.tokens.IntrospectToken(
            token_service_pb2.IntrospectTokenRequest(token=token, token_type_hint=token_type_hint),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def revoke(
        self,
        token: str,
        *,
        token_type_hint: token_service_pb2.TokenKind.ValueType = (
            token_service_pb2.TOKEN_KIND_UNSPECIFIED
        ),
        client_id: str = "",
        client_secret: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """RevokeToken (RFC 7009); the client is the bearer's unless ``client_id`` is given."""
        self.tokens.RevokeToken(
            token_service_pb2.RevokeTokenRequest(
                token=token,
                token_type_hint=token_type_hint,
                client_id=client_id,
                client_secret=client_secret,
            ),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def cache_get(
        self,
        namespace: str,
        key: str,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.GetValueResponse:
        """CacheService.GetValue; ``found`` tells a hit from a miss."""
        return self.cache.GetValue(
            cache_service_pb2.GetValueRequest(namespace=namespace, key=key),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def cache_set(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.SetValueResponse:
        """CacheService.SetValue; ``ttl_seconds`` None means the server default."""
        return self.cache.SetValue(
            _set_value_request(namespace, key, value, ttl_seconds),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def cache_delete(
        self,
        namespace: str,
        key: str,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> cache_service_pb2.DeleteValueResponse:
        """CacheService.DeleteValue; ``deleted`` is false when there was no live value."""
        return self.cache.DeleteValue(
            cache_service_pb2.DeleteValueRequest(namespace=namespace, key=key),
            timeout=timeout,
            metadata=_sync_metadata(metadata),
        )

    def close(self) -> None:
        """Close the channel, cancelling in-flight calls."""
        self._raw_channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _client_credentials_request(
    client_id: str, client_secret: str, scope: str | None
) -> token_service_pb2.IssueTokenRequest:
    return token_service_pb2.IssueTokenRequest(
        grant_type=token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS,
        client_id=client_id,
        client_secret=client_secret,
        scope=scope or "",
    )


def _set_value_request(
    namespace: str, key: str, value: bytes, ttl_seconds: int | None
) -> cache_service_pb2.SetValueRequest:
    request = cache_service_pb2.SetValueRequest(namespace=namespace, key=key, value=value)
    if ttl_seconds is not None:
        request.ttl_seconds = ttl_seconds
    return request


def _sync_metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...] | None:
    return None if metadata is None else tuple(metadata)


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Return the tokenservice ``ErrorInfo`` of a failed call, or None if it carries none.

    Takes the ``grpc.aio.AioRpcError`` of the asyncio client or the ``grpc.RpcError``
    of the blocking one.
    """
    trailing_metadata = getattr(exc, "trailing_metadata", None)
    if not callable(trailing_metadata):
        return None
    trailing = trailing_metadata()
    if trailing is None:
        return None
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None


def error_reason(exc: grpc.RpcError) -> str | None:
    """Return the error reason (e.g. ``"INVALID_GRANT"``) of a failed call, or None.

    Reasons are the names of ``tokenservice.v1.ErrorReason`` without the
    ``ERROR_REASON_`` prefix.
    """
    info = error_info(exc)
    return info.reason if info is not None else None
