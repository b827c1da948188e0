"""Bearer token sources: client_credentials access tokens, cached and renewed early.

A source hands out the cached access token while it is fresh and asks IssueToken for
a new one once less than ``renew_before`` seconds of its lifetime remain. By default
``renew_before`` is 10 % of the lifetime but at least 30 s, and never more than half
the lifetime (so short-lived tokens are still reused).

Callers that arrive while a renewal is in flight share it: one IssueToken call, one
outcome. A failed renewal raises in every caller that waited for it and is not
remembered: the next call tries again. Times come from a monotonic clock (injectable).

Give a source to a client so its calls carry ``authorization: Bearer <token>``::

    async with AsyncTokenServiceClient(target) as client:
        client.token_source = ClientCredentialsTokenSource(client, "my-service", secret)
        await client.cache_get("recipes", "popular")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tokenservice.v1 import token_service_pb2

__all__ = [
    "DEFAULT_MIN_RENEW_BEFORE",
    "DEFAULT_RENEW_FRACTION",
    "AsyncIssueFunction",
    "AsyncTokenSource",
    "ClientCredentialsTokenSource",
    "SyncClientCredentialsTokenSource",
    "SyncIssueFunction",
    "SyncTokenSource",
]

#: Default share of a token's lifetime left when it is renewed.
DEFAULT_RENEW_FRACTION = 0.1
#: Default minimum seconds left when a token is renewed (capped at half the lifetime).
DEFAULT_MIN_RENEW_BEFORE = 30.0

#: Performs IssueToken with client_credentials: ``(client_id, client_secret, scope)``.
AsyncIssueFunction = Callable[
    [str, str, str | None], Awaitable[token_service_pb2.IssueTokenResponse]
]
#: The blocking form of :data:`AsyncIssueFunction`.
SyncIssueFunction = Callable[[str, str, str | None], token_service_pb2.IssueTokenResponse]


class AsyncTokenSource(Protocol):
    """Anything that supplies the current bearer token to an asyncio client."""

    async def token(self) -> str: ...


class SyncTokenSource(Protocol):
    """Anything that supplies the current bearer token to a blocking client."""

    def token(self) -> str: ...


@runtime_checkable
class _AsyncIssuer(Protocol):
    def issue_client_credentials(
        self, client_id: str, client_secret: str, scope: str | None = None
    ) -> Awaitable[token_service_pb2.IssueTokenResponse]: ...


@runtime_checkable
class _SyncIssuer(Protocol):
    def issue_client_credentials(
        self, client_id: str, client_secret: str, scope: str | None = None
    ) -> token_service_pb2.IssueTokenResponse: ...


@dataclass(frozen=True, slots=True)
class _CachedToken:
    access_token: str
    renew_at: float


class _Renewals:
    """What both sources share: the credentials, the clock and the renewal rule."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        scope: str | None,
        renew_before: float | None,
        clock: Callable[[], float],
    ) -> None:
        if renew_before is not None and renew_before < 0:
            raise ValueError("renew_before must not be negative")
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.renew_before = renew_before
        self.clock = clock
        self.cached: _CachedToken | None = None

    def fresh(self) -> str | None:
        """The cached token if it need not be renewed yet."""
        cached = self.cached
        if cached is not None and self.clock() < cached.renew_at:
            return cached.access_token
        return None

    def store(self, response: token_service_pb2.IssueTokenResponse, requested_at: float) -> str:
        """Cache a token issued for a request sent at ``requested_at``; return it."""
        if not response.access_token:
            raise ValueError("IssueToken returned no access token")
        lifetime = max(float(response.expires_in), 0.0)
        if self.renew_before is None:
            margin = max(lifetime * DEFAULT_RENEW_FRACTION, DEFAULT_MIN_RENEW_BEFORE)
            margin = min(margin, lifetime / 2)
        else:
            margin = self.renew_before
        # Lifetime counts from when the server issued the token, which is after the
        # request was sent: measuring from the send keeps the estimate conservative.
        self.cached = _CachedToken(response.access_token, requested_at + lifetime - margin)
        return response.access_token


class ClientCredentialsTokenSource:
    """An asyncio :class:`AsyncTokenSource` for one client's client_credentials tokens.

    ``issuer`` is an :class:`~tokenservice.client.AsyncTokenServiceClient` (its
    ``issue_client_credentials`` is used) or any :data:`AsyncIssueFunction`.
    ``renew_before`` fixes the renewal margin in seconds (default: see the module).
    ``clock`` returns monotonic seconds (default ``time.monotonic``).
    """

    def __init__(
        self,
        issuer: _AsyncIssuer | AsyncIssueFunction,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        renew_before: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issue: AsyncIssueFunction = (
            issuer.issue_client_credentials if isinstance(issuer, _AsyncIssuer) else issuer
        )
        self._state = _Renewals(client_id, client_secret, scope, renew_before, clock)
        self._renewal: asyncio.Task[str] | None = None

    async def token(self) -> str:
        """Return a fresh access token, renewing it (once for all callers) if needed."""
        token = self._state.fresh()
        if token is not None:
            return token
        renewal = self._renewal
        if renewal is None:
            renewal = asyncio.get_running_loop().create_task(self._renew())
            self._renewal = renewal
        # A cancelled caller must not cancel the renewal the others are waiting for.
        return await asyncio.shield(renewal)

    def invalidate(self) -> None:
        """Forget the cached token (say, after UNAUTHENTICATED); the next call renews."""
        self._state.cached = None

    async def _renew(self) -> str:
        try:
            state = self._state
            requested_at = state.clock()
            response = await self._issue(state.client_id, state.client_secret, state.scope)
            return state.store(response, requested_at)
        finally:
            # Cleared as the renewal ends, so no caller joins a finished (failed) one.
            self._renewal = None


class SyncClientCredentialsTokenSource:
    """The thread-safe blocking twin of :class:`ClientCredentialsTokenSource`.

    ``issuer`` is a :class:`~tokenservice.client.SyncTokenServiceClient` or any
    :data:`SyncIssueFunction`. Threads that call :meth:`token` during a renewal wait
    for it and get its token or its exception.
    """

    def __init__(
        self,
        issuer: _SyncIssuer | SyncIssueFunction,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        renew_before: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issue: SyncIssueFunction = (
            issuer.issue_client_credentials if isinstance(issuer, _SyncIssuer) else issuer
        )
        self._state = _Renewals(client_id, client_secret, scope, renew_before, clock)
        self._lock = threading.Lock()
        self._renewal: concurrent.futures.Future[str] | None = None

    def token(self) -> str:
        """Return a fresh access token, renewing it (once for all threads) if needed."""
        with self._lock:
            token = self._state.fresh()
            if token is not None:
                return token
            renewal = self._renewal
            if renewal is not None:
                owner = False
            else:
                owner = True
                renewal = self._renewal = concurrent.futures.Future()
        if not owner:
            return renewal.result()
        try:
            state = self._state
            requested_at = state.clock()
            response = self._issue(state.client_id, state.client_secret, state.scope)
            with self._lock:
                token = state.store(response, requested_at)
        except BaseException as exc:
            renewal.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._renewal = None
        renewal.set_result(token)
        return token

    def invalidate(self) -> None:
        """Forget the cached token (say, after UNAUTHENTICATED); the next call renews."""
        with self._lock:
            self._state.cached = None
