"""Background tasks stop within a bound (``tokenservice_server.tasks``)."""

from __future__ import annotations

import asyncio

from tokenservice_server.tasks import cancel_and_wait


async def _swallows_cancellations(
    times: int, ticks: list[int], until: asyncio.Event | None = None
) -> None:
    """A loop that takes its first ``times`` cancellations for a failed round (as a
    retry loop does when a cancellation arrives as its read timeout fires)."""
    while until is None or not until.is_set():
        try:
            await asyncio.sleep(0.01)
            ticks.append(1)
        except asyncio.CancelledError:
            if times == 0:
                raise
            times -= 1


async def test_a_task_that_ignores_one_cancellation_still_ends() -> None:
    ticks: list[int] = []
    task = asyncio.create_task(_swallows_cancellations(2, ticks))
    await asyncio.sleep(0.05)
    assert await cancel_and_wait(task, within=5)
    assert task.cancelled()


async def test_a_task_that_never_ends_is_given_up_on() -> None:
    ticks: list[int] = []
    until = asyncio.Event()
    task = asyncio.create_task(_swallows_cancellations(10**9, ticks, until))
    await asyncio.sleep(0.05)
    assert not await cancel_and_wait(task, within=0.3)
    assert not task.done()
    before = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) > before  # still running: the caller was not blocked by it
    until.set()
    await task


async def test_a_task_that_failed_is_consumed() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task, within=1)
    assert task.done()
    assert not task.cancelled()
