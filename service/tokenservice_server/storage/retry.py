"""The retry policy of every Redis data-node connection: bounded in time, with jitter.

A call that meets ``ConnectionError``/``TimeoutError`` is retried with exponential backoff
and jitter, but no retry starts later than ``RETRY_BUDGET`` seconds after the call began;
then the error surfaces (the transport maps it to UNAVAILABLE). Errors that retrying cannot
fix (wrong credentials, an untrusted server certificate) surface at once.

The budget never outlasts the caller: the transport records each unary RPC's gRPC deadline
with ``retry_deadline()``; no retry starts after it and an attempt still waiting for Redis
then is given up, so a caller with a 2 s deadline gets UNAVAILABLE inside those 2 s rather
than DEADLINE_EXCEEDED after them.
"""

from __future__ import annotations

import asyncio
import builtins
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, EqualJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    ExternalAuthProviderError,
    TimeoutError,
)

__all__ = [
    "RETRY_ATTEMPTS",
    "RETRY_BUDGET",
    "BoundedRetry",
    "Outage",
    "default_retry",
    "retry_deadline",
]

#: No retry starts later than this many seconds after the call began, so a call gives up
#: within RETRY_BUDGET plus one attempt (at most connect_timeout + socket_timeout). It is
#: just longer than a Sentinel failover with down-after-milliseconds ~1000 (about 3 s
#: from kill -9 to the new master answering), so requests in flight ride through one;
#: longer would only hold requests during a real outage.
RETRY_BUDGET: Final = 5.0
#: A safety cap; the budget ends retrying first (backoff reaches 0.25-0.5 s by retry 4).
RETRY_ATTEMPTS: Final = 40
#: Backoff before retry n: between half and all of min(0.5 s, 0.05 s * 2**n) ("equal
#: jitter"), so during a failover the master address is asked for at least every 0.5 s.
_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 0.5

_T = TypeVar("_T")

# ConnectionError subclasses that retrying cannot fix: fail the call at once.
_PERMANENT_ERRORS: Final = (AuthenticationError, AuthorizationError, ExternalAuthProviderError)

# True while a BoundedRetry loop runs in this task (see BoundedRetry).
_retrying: ContextVar[bool] = ContextVar("tokenservice_redis_retrying", default=False)

# time.monotonic() after which no retry starts: the caller's deadline, minus a margin.
_caller_deadline: ContextVar[float | None] = ContextVar(
    "tokenservice_redis_caller_deadline", default=None
)
#: Kept free before the caller's deadline for the last attempt and the reply.
_DEADLINE_MARGIN: Final = 0.25


@contextmanager
def retry_deadline(time_remaining: float | None) -> Iterator[None]:
    """Within the block, retries stop ``time_remaining`` seconds from now (less a margin
    for the last attempt and the reply); ``None`` (no deadline) keeps the plain budget."""
    if time_remaining is None:
        yield
        return
    margin = min(_DEADLINE_MARGIN, time_remaining * 0.2)
    token = _caller_deadline.set(time.monotonic() + time_remaining - margin)
    try:
        yield
    finally:
        _caller_deadline.reset(token)


class BoundedRetry(Retry):
    """redis-py's ``Retry`` with a time budget, failing at once on errors retries cannot fix.

    redis-py nests retry loops: a command's loop reconnects through ``connect_check_health``
    (which retries the socket connect) and each new connection's health-check PING runs in a
    loop of its own, so attempts and time multiply (we measured 9.5 s for a 5 s budget). A
    loop started inside another one therefore makes a single attempt: the outermost loop
    in the task owns the retrying and the budget.

    Retrying on ``TimeoutError`` can apply a non-idempotent command twice (the reply, not
    the command, may have been lost); our multi-step state changes are Lua scripts that
    check state first, so a replay is refused rather than applied twice.
    """

    def __init__(
        self,
        backoff: AbstractBackoff,
        retries: int,
        *,
        budget: float,
        outage: Outage | None = None,
    ) -> None:
        super().__init__(backoff, retries, (ConnectionError, TimeoutError))
        self.budget = budget
        self.outage = outage

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        if _retrying.get():
            try:
                return await do()
            except self._supported_errors as error:
                await _report(fail, error, 1, with_failure_count)
                raise
        return await self._loop(
            do, fail, is_retryable, with_failure_count, started=time.monotonic(), error=None
        )

    @staticmethod
    def may_try_alone() -> bool:
        """Whether a call may make its first attempt before (outside) the retry loop, as
        the shared connection does on the hot path: no retry loop runs in this task (its
        one would own the retrying) and the caller set no deadline (which bounds every
        attempt, see ``_before``)."""
        return not _retrying.get() and _caller_deadline.get() is None

    async def after_failure(
        self,
        error: Exception,
        started: float,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[[Exception], Any],
    ) -> _T:
        """The retry loop of a call whose first attempt, begun at ``started``
        (``time.monotonic()``) outside the loop, failed with ``error``: the same retries
        and the same budget, counted from ``started``, as if the loop had made it."""
        return await self._loop(do, fail, None, False, started=started, error=error)

    async def _loop(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_failure_count: bool,
        *,
        started: float,
        error: Exception | None,
    ) -> _T:
        token = _retrying.set(True)
        try:
            self._backoff.reset()  # type: ignore[no-untyped-call]
            deadline = started + self.budget
            caller_deadline = _caller_deadline.get()
            if caller_deadline is not None:
                deadline = min(deadline, caller_deadline)
            failures = 0
            while True:
                if error is None:
                    try:
                        if caller_deadline is None:
                            return await do()
                        return await _before(caller_deadline, do)
                    except self._supported_errors as caught:
                        error = caught
                if _is_permanent(error) or (is_retryable is not None and not is_retryable(error)):
                    raise error
                failures += 1
                await _report(fail, error, failures, with_failure_count)
                backoff = self._backoff.compute(failures)
                out_of_attempts = 0 <= self._retries < failures
                if self.outage is not None and self.outage.fail_fast:
                    raise error  # Redis has been gone for a while: answer now
                if out_of_attempts or time.monotonic() + backoff > deadline:
                    raise error
                if backoff > 0:
                    await asyncio.sleep(backoff)
                error = None
        finally:
            _retrying.reset(token)


async def _report(
    fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
    error: Exception,
    failures: int,
    with_failure_count: bool,
) -> None:
    if with_failure_count:
        await fail(error, failures)  # type: ignore[call-arg]
    else:
        await fail(error)  # type: ignore[call-arg]


async def _before(caller_deadline: float, do: Callable[[], Awaitable[_T]]) -> _T:
    """``do()``, given up (redis ``TimeoutError``) at the caller's deadline less the margin.

    One attempt can block for the socket timeout (a master that stopped answering, a
    sentinel mid-failover); without this bound an attempt started just before the deadline
    answered DEADLINE_EXCEEDED instead of UNAVAILABLE. A cancelled command leaves its
    connection disconnected (redis-py), and a write may or may not have been applied,
    as with any lost reply.
    """
    try:
        async with asyncio.timeout(caller_deadline - time.monotonic()):
            return await do()
    except builtins.TimeoutError:
        raise TimeoutError("no answer from Redis before the caller's deadline") from None


def _is_permanent(error: Exception) -> bool:
    """Errors that retrying cannot fix: wrong credentials, an untrusted certificate."""
    return isinstance(error, _PERMANENT_ERRORS) or isinstance(
        error.__context__, ssl.SSLCertVerificationError
    )


class Outage:
    """How long the health probe has found Redis unreachable.

    Retrying rides through a failover (a new master answers within a few seconds), but
    when Redis has been gone for longer than ``fail_fast_after`` seconds a caller gains
    nothing by waiting out its deadline: each call then makes its one attempt (so the
    first call after Redis returns succeeds without waiting for the probe) and answers
    UNAVAILABLE at once if it fails. 0 disables failing fast.
    """

    def __init__(self, fail_fast_after: float, clock: Callable[[], float] = time.monotonic):
        self._after = fail_fast_after
        self._clock = clock
        self._down_since: float | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Outage:
        # redis-py deep-copies the retry policy into every connection; the outage is one
        # fact about the server, so every copy shares it.
        return self

    def report(self, reachable: bool) -> None:
        if reachable:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = self._clock()

    @property
    def fail_fast(self) -> bool:
        since = self._down_since
        return self._after > 0 and since is not None and self._clock() - since >= self._after


def default_retry(outage: Outage | None = None) -> BoundedRetry:
    """The retry policy of every data-node connection."""
    return BoundedRetry(
        EqualJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE),
        RETRY_ATTEMPTS,
        budget=RETRY_BUDGET,
        outage=outage,
    )
