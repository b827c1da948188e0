"""Operator counters (``auth_stats``) added in memory and written to Redis in batches.

Envoy's Check is the hottest path of the product, and some of its answers (no token, a
malformed token) must not touch Redis at all. Counting each check with its own write
would double the round trips, so checks are counted here and flushed every interval
in one HINCRBY pipeline: ``auth_stats`` lags by at most that interval and loses at most
one interval of counts if the process dies (SIGTERM flushes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tokenservice_server.logging import get_logger

if TYPE_CHECKING:
    from tokenservice_server.domain.ports import StatsSink

__all__ = ["StatsBuffer"]

_log = get_logger("tokenservice.stats")


class StatsBuffer:
    def __init__(self, sink: StatsSink) -> None:
        self._sink = sink
        self._pending: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        self._pending[name] += amount

    @property
    def pending(self) -> dict[str, int]:
        return dict(self._pending)

    async def flush(self) -> None:
        """Write what was counted; on failure keep it for the next flush."""
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        try:
            await self._sink.increment(dict(batch))
        except BaseException:
            self._pending.update(batch)
            raise

    async def _run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            try:
                await self.flush()
            except Exception as exc:  # Redis away: the counts wait for the next flush
                _log.warning("stats_flush_failed", error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def running(self, interval: float, final_timeout: float = 1.0) -> AsyncIterator[None]:
        """Flush every ``interval`` seconds while the context is open, and once at exit
        (a flush is never cancelled half-way, so nothing is counted twice)."""
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(interval, stop), name="stats-flush")
        try:
            yield
        finally:
            stop.set()
            try:
                async with asyncio.timeout(final_timeout):
                    await task
            except TimeoutError:
                _log.warning("stats_flush_abandoned", pending=sum(self._pending.values()))
