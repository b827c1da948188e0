"""Stopping background tasks within a bound.

``task.cancel(); await task`` waits forever if the cancellation is lost: a library call
inside the task may catch it, or take it for a timeout of its own that expires at the
same moment (``asyncio.timeout`` in redis-py's reads and in our Redis probe), and a loop
that treats that as one failed round carries on. :func:`cancel_and_wait` cancels again
until the task ends, and gives up after ``within`` seconds so shutdown stays bounded
whatever the task does.
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
