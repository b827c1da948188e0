"""The outage clock behind failing fast (``storage/retry.py`` ``Outage``)."""

from __future__ import annotations

import copy

import pytest
from redis.exceptions import ConnectionError

from tokenservice_server.storage.retry import Outage, default_retry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fails_fast_only_after_the_outage_lasted_long_enough() -> None:
    clock = Clock()
    outage = Outage(5.0, clock)
    assert not outage.fail_fast
    outage.report(False)
    clock.now += 4.9
    outage.report(False)  # still the same outage: its start does not move
    assert not outage.fail_fast
    clock.now += 0.2
    assert outage.fail_fast
    outage.report(True)
    assert not outage.fail_fast


def test_zero_never_fails_fast() -> None:
    clock = Clock()
    outage = Outage(0.0, clock)
    outage.report(False)
    clock.now += 3600
    assert not outage.fail_fast


def test_every_copy_of_the_retry_policy_shares_the_outage() -> None:
    """redis-py deep-copies the retry policy into each connection."""
    clock = Clock()
    outage = Outage(1.0, clock)
    copied = copy.deepcopy(default_retry(outage))
    assert copied.outage is outage
    outage.report(False)
    clock.now += 2
    assert copied.outage is not None
    assert copied.outage.fail_fast


async def _attempts(outage: Outage) -> int:
    calls = 0

    async def do() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async def fail(error: Exception) -> None:
        return None

    policy = default_retry(outage)
    policy.budget = 0.5
    with pytest.raises(ConnectionError):
        await policy.call_with_retry(do, fail)
    return calls


async def test_a_young_outage_is_retried_an_old_one_answers_after_one_attempt() -> None:
    clock = Clock()
    outage = Outage(5.0, clock)
    outage.report(False)
    assert await _attempts(outage) > 1
    clock.now += 6
    assert await _attempts(outage) == 1
