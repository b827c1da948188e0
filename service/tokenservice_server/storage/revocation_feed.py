"""Keeps this replica's hot-token cache in step with revocations on every replica.

The revocation scripts PUBLISH what they revoked on ``auth:revocations`` (see
``lua/_tokens.lua``); :class:`RevocationFeed` subscribes on a connection of the auth pool
(so it follows a Sentinel failover like every other command) and drops the named cache
entries. The cache is used only while the subscription is confirmed and answering pings:

* a connection error, or no answer to the once-per-``ping_interval`` PING within three
  intervals, marks the feed down: the cache is cleared and bypassed, it is logged and
  ``tokenservice_token_cache_invalidation_up`` drops to 0; the feed then resubscribes
  with exponential backoff (0.05 s doubling to 2 s);
* every subscribe confirmation (including redis-py's own reconnects) clears the cache
  before it is used again, since messages may have been lost in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.lean_metrics import LeanCounter
from tokenservice_server.logging import get_logger
from tokenservice_server.storage import keys
from tokenservice_server.tasks import cancel_and_wait

__all__ = ["REVOCATION_CHANNEL", "RevocationFeed", "TokenCacheMetrics", "index_attribute"]

#: Published by the revocation scripts (``<root>revocations``).
REVOCATION_CHANNEL: Final = keys.AUTH_ROOT + "revocations"

_log = get_logger("tokenservice.token_cache")
_STOP_TIMEOUT = 5.0  # seconds for the subscriber to end at shutdown
_MIN_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 2.0


_INDEX_ATTRIBUTES: Final = (
    (keys.FAMILY_PREFIX, "f:"),
    (keys.CLIENT_TOKENS_PREFIX, "c:"),
    (keys.SUBJECT_TOKENS_PREFIX, "u:"),
    (keys.SESSION_TOKENS_PREFIX, "n:"),
)


def index_attribute(index_key: str) -> list[str]:
    """The invalidation key the scripts publish when they revoke this index (``[]`` for
    a key that is not a token index), as ``lua/_tokens.lua`` derives it."""
    for prefix, attribute in _INDEX_ATTRIBUTES:
        if index_key.startswith(prefix):
            return [attribute + index_key[len(prefix) :]]
    return []


class TokenCacheMetrics:
    """The cache's metrics, on the server's registry."""

    def __init__(self, registry: CollectorRegistry, cache: TokenCache) -> None:
        registry.register(_LookupCounts(cache))
        self.up = Gauge(
            "tokenservice_token_cache_invalidation_up",
            "1 while the revocation channel is subscribed and the hot-token cache is used",
            registry=registry,
        )
        self.invalidations = LeanCounter(
            "tokenservice_token_cache_invalidations",
            "Revocation messages received on the invalidation channel",
            registry=registry,
        )


class _LookupCounts(Collector):
    """``tokenservice_token_cache_lookups_total{result}``, read from the cache's own counts
    at each scrape (the scrape thread reads two ints the event loop's thread writes)."""

    def __init__(self, cache: TokenCache) -> None:
        self._cache = cache

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        family.add_metric(["hit"], self._cache.hits)
        family.add_metric(["miss"], self._cache.misses)
        return [family]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "tokenservice_token_cache_lookups",
            "Hot-token cache lookups, by result (hit or miss; bypassed counts as miss)",
            labels=["result"],
        )


class RevocationFeed:
    def __init__(
        self,
        redis: Redis,
        cache: TokenCache,
        metrics: TokenCacheMetrics,
        *,
        ping_interval: float = 0.5,
        channel: str = REVOCATION_CHANNEL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._cache = cache
        self._metrics = metrics
        self._interval = ping_interval
        self._channel = channel
        self._clock = clock
        self.resubscriptions = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(self._run(), name="revocation-feed")
        try:
            yield
        finally:
            await cancel_and_wait(task, within=_STOP_TIMEOUT)
            self._down()

    def _down(self) -> None:
        self._cache.set_up(False)
        self._metrics.up.set(0)

    async def _run(self) -> None:
        backoff = _MIN_BACKOFF
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: bypass the cache, then resubscribe
                if self._cache.up:
                    backoff = _MIN_BACKOFF  # it worked until now: a new outage
                if backoff == _MIN_BACKOFF:  # logged once per outage
                    _log.warning(
                        "token_cache_invalidation_down",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                    )
                self._down()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            heard = next_ping = self._clock()
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(
                    timeout=self._interval / 2
                )
                now = self._clock()
                if message is not None:
                    heard = now
                    self._handle(message)
                if now - heard > 3 * self._interval:
                    raise TimeoutError("the revocation channel stopped answering pings")
                if now >= next_ping:
                    next_ping = now + self._interval
                    await pubsub.ping()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            data = message["data"]
            text = data.decode() if isinstance(data, bytes) else str(data)
            self._cache.invalidate(text.split())
            self._metrics.invalidations.inc()
        elif kind == "subscribe":
            # A first subscription or a reconnect: whatever was cached may be stale.
            self._cache.clear()
            if self._cache.up:
                self.resubscriptions += 1
                _log.warning("token_cache_invalidation_resubscribed")
            else:
                self._cache.set_up(True)
                _log.info("token_cache_invalidation_up", channel=self._channel)
            self._metrics.up.set(1)
