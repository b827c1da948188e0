"""Stopping background tasks within a bound.

A task cancelled while ``asyncio.timeout`` (used by redis-py for socket reads and by our
Redis probe) reaches its own deadline can take the cancellation for that timeout on
Python 3.11: the task sees ``TimeoutError``, handles it as a failed round, and carries on
looping as if never cancelled, so ``task.cancel(); await task`` waits forever.
:func:`cancel_and_wait` cancels again until the task ends, and gives up after ``within``
seconds so shutdown stays bounded whatever the task does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tokenservice_server.logging import get_logger

__all__ = ["cancel_and_wait"]

_log = get_logger("tokenservice.tasks")
_RECANCEL_EVERY = 0.1  # seconds


async def cancel_and_wait(task: asyncio.Task[Any], *, within: float) -> bool:
    """Cancel ``task`` until it has ended, for at most ``within`` seconds; whether it
    ended. Its outcome (a cancellation, or whatever it raised) is consumed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            _log.error("task_stop_timeout", task=task.get_name(), seconds=within)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_EVERY, remaining))
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()
    return True
