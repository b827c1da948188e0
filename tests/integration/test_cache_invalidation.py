"""InvalidateNamespace is O(1): a namespace of 50,000 entries is dropped by one script
that does the same few commands as for an empty one, later reads miss, and the old
generation's storage goes away on its own (issue 6)."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.integration.cache_support import (
    CACHE_DB,
    Cache,
    CommandLog,
    cache_db,
    entry,
    redis_target,
)
from tokenservice_server.storage import cache_keys
from tokenservice_server.storage.cache_store import RECLAIM_PER_WRITE

BULK = 50_000


@pytest.fixture
async def cache(channel: grpc.aio.Channel, admin_token: str) -> Cache:
    return Cache(channel, admin_token)


async def fill(cache: Cache, namespace: str, count: int, *, in_flight: int = 32) -> None:
    """``count`` entries through BatchSetValues (100 per call, ``in_flight`` at once)."""
    gate = asyncio.Semaphore(in_flight)

    async def batch(start: int) -> None:
        async with gate:
            keys = range(start, min(start + 100, count))
            await cache.batch_set(namespace, [entry(f"item:{i}", b"payload") for i in keys])

    await asyncio.gather(*(batch(start) for start in range(0, count, 100)))


async def test_a_namespace_of_50000_entries_invalidates_in_one_constant_step(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    # Room for the bulk namespace; health probes kept out of the command log.
    app = await app_factory(
        redis={"url": valkey.url}, cache={"max_entries_per_namespace": 60_000}, health_interval=60
    )
    admin = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(redis_target(app)) as channel:
        cache = Cache(channel, await issue_token(channel, admin))
        await fill(cache, "bulk", BULK)
        await cache.set("small", "only", b"v")
        assert (await cache.stats("bulk")).entries == BULK

        with CommandLog(valkey) as small:
            assert await cache.invalidate("small") == 1
        with CommandLog(valkey) as bulk:
            assert await cache.invalidate("bulk") == BULK

        # One round trip, and the script's work does not depend on the namespace's size:
        # the same commands for 50,000 entries as for one, none of them per entry.
        assert bulk.requests(CACHE_DB) == ["EVALSHA"]
        assert bulk.script_commands() == small.script_commands()
        assert len(bulk.script_commands()) <= 12, bulk.script_commands()

        sample = [f"item:{i}" for i in random.sample(range(BULK), 100)]
        assert not any(item.found for item in await cache.batch_get("bulk", sample))
        assert not (await cache.get("bulk", "item:0")).found
        stats = await cache.stats("bulk")
        assert (stats.entries, stats.bytes, stats.invalidations) == (0, 0, 1)
        # The old generation is unreachable, not deleted: its values expire on their TTLs.
        raw = cache_db(valkey)
        old = [cache_keys.value_key("bulk", 0, key).encode() for key in sample]
        assert raw.exists(*old) == len(old)
        assert all(0 < raw.pttl(key) <= 86_400_000 for key in old[:10])
        assert raw.pttl(cache_keys.lru_key("bulk", 0)) > 0


async def test_later_writes_delete_an_invalidated_generation(
    cache: Cache, valkey: RedisProcess
) -> None:
    await fill(cache, "recipes", 100)
    await cache.invalidate("recipes")
    raw = cache_db(valkey)
    retired = cache_keys.retired_key("recipes").encode()
    assert raw.zrange(retired, 0, -1) == [b"0"]
    assert raw.pttl(retired) > 0

    # Each written entry deletes RECLAIM_PER_WRITE entries of the old generation.
    await cache.set("recipes", "new", b"v")
    left = raw.zcard(cache_keys.lru_key("recipes", 0))
    assert left == 100 - RECLAIM_PER_WRITE
    writes = -(-left // RECLAIM_PER_WRITE)  # enough to delete the rest
    await cache.batch_set("recipes", [entry(f"n{i}", b"v") for i in range(writes)])

    # Nothing of generation 0 is left: no value (cache:recipes:*), no index, no retired mark.
    assert list(raw.scan_iter(match=b"cache:recipes:*")) == []
    old_index = [name("recipes", 0) for name in (cache_keys.lru_key, cache_keys.expiry_key)]
    assert raw.exists(*old_index, cache_keys.sizes_key("recipes", 0), retired) == 0
    assert (await cache.stats("recipes")).entries == writes + 1


async def test_invalidating_an_empty_namespace_leaves_nothing_to_reclaim(
    cache: Cache, valkey: RedisProcess
) -> None:
    assert await cache.invalidate("fresh") == 0
    assert await cache.invalidate("fresh") == 0
    raw = cache_db(valkey)
    assert raw.exists(cache_keys.retired_key("fresh")) == 0
    stats = await cache.stats("fresh")
    assert (stats.entries, stats.invalidations) == (0, 2)
