"""Binds the Redis clients of one server to its Prometheus metrics.

``instrument_redis(connections, metrics)`` sets the command observers (latency histogram,
error counter), the Sentinel failover hook and the pool-usage gauges, which are read at
scrape time from the pools themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenservice_server.lean_metrics import CounterChild, HistogramChild
from tokenservice_server.logging import get_logger
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.storage.connection import RedisConnections
from tokenservice_server.storage.instrumented import (
    MAX_COMMAND_LABELS,
    FailoverObservingPool,
    InstrumentedRedis,
    error_kind,
)
from tokenservice_server.storage.lean import LeanPoolMixin
from tokenservice_server.storage.shared_connection import SharedConnection

__all__ = ["RedisCommandMetrics", "instrument_redis"]

_log = get_logger("tokenservice.redis")


class RedisCommandMetrics:
    """The ``CommandObserver`` of one logical database (``auth`` or ``cache``)."""

    def __init__(self, metrics: ServerMetrics, db: str) -> None:
        self._db = db
        self._histogram = metrics.redis_command_seconds
        self._errors = metrics.redis_command_errors
        # Children by command name, looked up once (labels() costs more than observe()).
        self._children: dict[str, HistogramChild] = {}
        self._error_children: dict[str, CounterChild] = {}

    def _child(self, command: str) -> HistogramChild:
        child = self._children.get(command)
        if child is None:
            if len(self._children) >= MAX_COMMAND_LABELS:
                command = "OTHER"
            child = self._histogram.labels(db=self._db, command=command)
            self._children[command] = child
        return child

    def observe(self, command: str, seconds: float) -> None:
        child = self._children.get(command)  # inline: every Redis command comes here
        (child or self._child(command)).observe(seconds)

    def failed(self, command: str, error: Exception, seconds: float) -> None:
        self._child(command).observe(seconds)
        kind = error_kind(error)
        child = self._error_children.get(kind)
        if child is None:
            child = self._errors.labels(db=self._db, error=kind)
            self._error_children[kind] = child
        child.inc()


class _FailoverCounter:
    """Counts each new master once, although both pools (auth, cache) report it."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._counter = metrics.redis_failovers
        self._current: tuple[str, int] | None = None

    def __call__(self, old: tuple[str, int], new: tuple[str, int]) -> None:
        if new == self._current:
            return
        self._current = new
        self._counter.inc()
        _log.warning(
            "redis_failover_observed",
            old_master=f"{old[0]}:{old[1]}",
            new_master=f"{new[0]}:{new[1]}",
        )


def _pool_size(pool: object, attribute: str) -> Callable[[], float]:
    def size() -> float:
        return float(len(getattr(pool, attribute, ())))

    return size


def _shared_open(shared: SharedConnection) -> Callable[[], float]:
    def value() -> float:
        return float(shared.connected)

    return value


def instrument_redis(connections: RedisConnections, metrics: ServerMetrics) -> None:
    failovers = _FailoverCounter(metrics)
    for db, client in (("auth", connections.auth), ("cache", connections.cache)):
        if isinstance(client, InstrumentedRedis):
            client.observer = RedisCommandMetrics(metrics, db)
        pool = client.connection_pool
        if isinstance(pool, FailoverObservingPool):
            pool.on_master_change = failovers
        if hasattr(pool, "_in_use_connections") and hasattr(pool, "_available_connections"):
            # Read at scrape time, from the metrics thread: len() of a set or list is
            # atomic, and the pool is read each time (reset() replaces its containers).
            metrics.redis_pool_connections.labels(db=db, state="in_use").set_function(
                _pool_size(pool, "_in_use_connections")
            )
            metrics.redis_pool_connections.labels(db=db, state="idle").set_function(
                _pool_size(pool, "_available_connections")
            )
        if isinstance(pool, LeanPoolMixin) and pool.shared is not None:
            metrics.redis_pool_connections.labels(db=db, state="shared").set_function(
                _shared_open(pool.shared)
            )
        metrics.redis_pool_max_connections.labels(db=db).set(pool.max_connections)
