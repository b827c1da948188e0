"""A first attempt made outside the retry loop (the shared connection's hot path), then
the loop (``BoundedRetry.after_failure``): the same retries, the budget counted from the
first attempt, and the cases where a first attempt may not be made alone."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import AuthenticationError, ConnectionError

from tokenservice_server.storage.retry import default_retry, retry_deadline


async def _nothing(error: Exception) -> None:
    return None


async def test_a_failed_first_attempt_continues_into_the_retry_loop() -> None:
    policy = default_retry()
    calls = 0

    async def do() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("refused")
        return "answer"

    started = time.monotonic()
    assert await policy.after_failure(ConnectionError("first"), started, do, _nothing) == "answer"
    assert calls == 3  # two more failures, then the answer


async def test_the_budget_counts_from_the_first_attempt() -> None:
    policy = default_retry()
    policy.budget = 1.0
    calls = 0

    async def do() -> None:
        nonlocal calls
        calls += 1

    # The first attempt began longer ago than the budget: nothing more is tried.
    with pytest.raises(ConnectionError, match="first"):
        await policy.after_failure(ConnectionError("first"), time.monotonic() - 2, do, _nothing)
    assert calls == 0


async def test_an_error_retrying_cannot_fix_is_raised_at_once() -> None:
    policy = default_retry()

    async def do() -> None:
        raise AssertionError("not retried")

    with pytest.raises(AuthenticationError):
        await policy.after_failure(
            AuthenticationError("bad password"), time.monotonic(), do, _nothing
        )


async def test_no_first_attempt_alone_inside_a_retry_loop_or_with_a_caller_deadline() -> None:
    policy = default_retry()
    assert policy.may_try_alone()
    with retry_deadline(2.0):
        assert not policy.may_try_alone()  # the deadline bounds every attempt
    seen: list[bool] = []

    async def do() -> None:
        seen.append(policy.may_try_alone())

    await policy.call_with_retry(do, _nothing)
    assert seen == [False]  # the running loop owns the retrying
    assert policy.may_try_alone()
