"""The shared cache on the cache database: one Lua script, one round trip, per call.

Key layout and the generation scheme are described in ``cache_keys``; the scripts are
``lua/cache_*.lua`` (names built by ``lua/_cache.lua``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tokenservice_server.domain.cache import (
    Entry,
    Lease,
    LeaseStatus,
    Lookup,
    NamespaceStats,
    StoredWrite,
)
from tokenservice_server.storage import cache_keys
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = ["RECLAIM_PER_WRITE", "STATS_EXPIRED_SWEEP", "RedisCacheStore"]

#: Entries of invalidated generations each written entry deletes (``cache_set.lua``).
RECLAIM_PER_WRITE = 8
#: Expired index entries a stats call drops before counting (bounds its work).
STATS_EXPIRED_SWEEP = 1000

_LEASE_STATUS = {0: LeaseStatus.NONE, 1: LeaseStatus.GRANTED, 2: LeaseStatus.HELD_ELSEWHERE}


_INT32_MAX = 2**31 - 1


def _seconds(milliseconds: int) -> int:
    """Remaining lifetime in whole seconds, rounded up (a live value never reads 0) and
    capped to the int32 of the contract (a key written by hand may outlive it)."""
    return min(math.ceil(milliseconds / 1000), _INT32_MAX)


class RedisCacheStore:
    def __init__(self, scripts: ScriptRegistry) -> None:
        self._scripts = scripts

    async def read(
        self, namespace: str, keys: Sequence[str], *, adopt_ttl: int, lease: Lease | None
    ) -> tuple[list[Lookup], LeaseStatus]:
        reply: list[Any] = await self._scripts.call(
            "cache_get",
            keys=[cache_keys.GENERATIONS, cache_keys.STATS],
            args=[
                namespace,
                adopt_ttl * 1000,
                lease.token if lease else "",
                lease.ttl * 1000 if lease else 0,
                *keys,
            ],
        )
        lookups = []
        for index, key in enumerate(keys):
            found, value, ttl_ms = reply[1 + 3 * index : 4 + 3 * index]
            if int(found):
                lookups.append(Lookup(key, True, bytes(value), _seconds(int(ttl_ms))))
            else:
                lookups.append(Lookup(key, False))
        return lookups, _LEASE_STATUS[int(reply[0])]

    async def write(
        self, namespace: str, entries: Sequence[Entry], *, max_entries: int, lease_token: str
    ) -> StoredWrite:
        args: list[str | bytes | int] = [namespace, max_entries, lease_token, RECLAIM_PER_WRITE]
        for entry in entries:
            args.extend((entry.key, entry.value, entry.ttl * 1000))
        evicted, cap = await self._scripts.call(
            "cache_set",
            keys=[cache_keys.GENERATIONS, cache_keys.STATS, cache_keys.CONFIG],
            args=args,
        )
        if int(evicted) < 0:
            return StoredWrite(accepted=False, evicted=0, max_entries=int(cap))
        return StoredWrite(accepted=True, evicted=int(evicted), max_entries=int(cap))

    async def delete(self, namespace: str, key: str) -> bool:
        removed = await self._scripts.call(
            "cache_delete",
            keys=[cache_keys.GENERATIONS, cache_keys.STATS],
            args=[namespace, key],
        )
        return bool(removed)

    async def invalidate(self, namespace: str) -> int:
        live = await self._scripts.call(
            "cache_invalidate",
            keys=[cache_keys.GENERATIONS, cache_keys.STATS],
            args=[namespace],
        )
        return int(live)

    async def stats(self, namespace: str, *, max_entries: int) -> NamespaceStats:
        reply: list[Any] = await self._scripts.call(
            "cache_stats",
            keys=[cache_keys.GENERATIONS, cache_keys.STATS, cache_keys.CONFIG],
            args=[namespace, max_entries, STATS_EXPIRED_SWEEP],
        )
        hits, misses, entries, evictions, size, cap, invalidations = (int(n) for n in reply)
        return NamespaceStats(
            hits=hits,
            misses=misses,
            entries=entries,
            evictions=evictions,
            # The running total can drift below zero only if cache_stats was reset by hand.
            bytes=max(size, 0),
            max_entries=cap,
            invalidations=invalidations,
        )
