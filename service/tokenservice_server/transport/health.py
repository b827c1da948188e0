"""``grpc.health.v1.Health`` driven by a periodic Redis probe.

A token service that cannot reach Redis can neither issue nor verify anything, so every
service reports NOT_SERVING while the probe fails and SERVING again once it answers.
The probe period (default 1 s) plus its timeout keeps a flip well within 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health, health_pb2

from tokenservice_server.logging import get_logger
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.tasks import cancel_and_wait

__all__ = ["LIVENESS", "OVERALL", "HealthMonitor"]

OVERALL = ""  # the empty service name answers for the whole server
# For liveness probes: SERVING while the process can answer at all, whatever Redis does.
# Restarting pods does not bring Redis back; only readiness should follow it.
LIVENESS = "liveness"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_STOP_TIMEOUT = 5.0  # seconds for the probe loop to end at shutdown
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_log = get_logger("tokenservice.health")


class HealthMonitor:
    """Owns the health servicer's statuses; nothing else writes them."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        services: Sequence[str],
        metrics: ServerMetrics,
        interval: float,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._probe = probe
        self._services = (OVERALL, *services)
        self._metrics = metrics
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def start(self) -> None:
        """Probe once (so the first answer is already true) and keep probing."""
        await self.servicer.set(LIVENESS, _SERVING)
        await self._probe_once()
        self._task = asyncio.create_task(self._run(), name="health-probe")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._probe_once()

    async def _probe_once(self) -> None:
        started = time.perf_counter()
        ok = await self._probe()
        self._metrics.redis_probe_seconds.observe(time.perf_counter() - started)
        self._metrics.redis_up.set(1 if ok else 0)
        if ok == self._serving:
            return
        if self._serving is not None:
            event = "redis_reachable" if ok else "redis_unreachable"
            (_log.info if ok else _log.error)(event, serving=ok)
        self._serving = ok
        for service in self._services:
            await self.servicer.set(service, _SERVING if ok else _NOT_SERVING)

    async def shutdown(self) -> None:
        """Stop probing and answer NOT_SERVING for good (load balancers drain us)."""
        if self._task is not None:
            await cancel_and_wait(self._task, within=_STOP_TIMEOUT)
            self._task = None
        await self.servicer.enter_graceful_shutdown()
