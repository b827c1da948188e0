"""The per-namespace entry cap: a write into a full namespace evicts its least recently
used entries in the same atomic step, reads refresh recency, and the cap can be set per
namespace in ``cache_config`` (issue 6)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.harness.redis_servers import RedisProcess
from tests.integration.cache_support import Cache, cache_db, entry
from tokenservice_server.storage import cache_keys


@pytest.fixture
async def cache(channel: grpc.aio.Channel, admin_token: str) -> Cache:
    return Cache(channel, admin_token)


def set_cap(valkey: RedisProcess, namespace: str, cap: int) -> None:
    cache_db(valkey).hset(cache_keys.CONFIG, cache_keys.config_field(namespace, "max_entries"), cap)


def present(valkey: RedisProcess, namespace: str, keys: list[str]) -> set[str]:
    """The keys holding a value, looked up in Redis: reading through the service would
    make them recently used and change the order under test."""
    raw = cache_db(valkey)
    return {key for key in keys if raw.exists(cache_keys.value_key(namespace, 0, key))}


async def test_a_write_into_a_full_namespace_evicts_the_least_recently_used(
    cache: Cache, valkey: RedisProcess
) -> None:
    set_cap(valkey, "recipes", 5)
    for i in range(5):
        assert await cache.set("recipes", f"k{i}", b"v") == 0
    await cache.get("recipes", "k0")  # k0 is now the most recently used; k1 the least
    await cache.batch_get("recipes", ["k2"])  # batch reads refresh recency too

    assert await cache.set("recipes", "k5", b"v") == 1
    assert present(valkey, "recipes", [f"k{i}" for i in range(6)]) == {
        "k0",
        "k2",
        "k3",
        "k4",
        "k5",
    }
    # Overwriting a key that is there evicts nothing; it only makes it recent.
    assert await cache.set("recipes", "k3", b"again") == 0
    assert await cache.batch_set("recipes", [entry("n1", b"v"), entry("n2", b"v")]) == 2
    # Recency now, oldest first: k4 k0 k2 k5 k3; two new keys evict k4 and k0.
    assert present(valkey, "recipes", ["k0", "k2", "k3", "k4", "k5", "n1", "n2"]) == {
        "k2",
        "k3",
        "k5",
        "n1",
        "n2",
    }
    stats = await cache.stats("recipes")
    assert (stats.entries, stats.evictions, stats.max_entries) == (5, 3, 5)
    # The value and its index entries are gone together: nothing is left behind.
    raw = cache_db(valkey)
    assert raw.exists(b"cache:recipes:k1", b"cache:recipes:k0", b"cache:recipes:k4") == 0
    assert raw.zcard(cache_keys.lru_key("recipes", 0)) == 5
    assert raw.hlen(cache_keys.sizes_key("recipes", 0)) == 5


async def test_concurrent_writes_evict_exactly_the_least_recently_used(
    cache: Cache, valkey: RedisProcess
) -> None:
    set_cap(valkey, "recipes", 20)
    old = [f"old{i:02}" for i in range(20)]
    for key in old:  # written one by one: old00 is the least recently used
        await cache.set("recipes", key, b"v")
    for key in old[:5]:  # read: now the most recently used of the old ones
        await cache.get("recipes", key)

    new = [f"new{i:02}" for i in range(10)]
    evicted = await asyncio.gather(*(cache.set("recipes", key, b"v") for key in new))

    # However the ten writes interleave, each evicts the oldest entry at its turn, and a
    # new key is always newer than every old one: the ten least recently used go.
    assert sum(evicted) == 10
    assert present(valkey, "recipes", old + new) == set(old[:5] + old[15:] + new)
    stats = await cache.stats("recipes")
    assert (stats.entries, stats.evictions) == (20, 10)


async def test_the_cap_holds_under_many_concurrent_writers(
    cache: Cache, valkey: RedisProcess
) -> None:
    set_cap(valkey, "busy", 50)
    keys = [f"k{i:03}" for i in range(300)]
    single = [cache.set("busy", key, b"x" * 10) for key in keys[:200]]
    batches = [
        cache.batch_set("busy", [entry(key, b"x" * 10) for key in keys[start : start + 25]])
        for start in range(200, 300, 25)
    ]
    evicted = await asyncio.gather(*single, *batches)

    assert sum(evicted) == 250
    assert len(present(valkey, "busy", keys)) == 50
    stats = await cache.stats("busy")
    assert (stats.entries, stats.evictions, stats.bytes) == (50, 250, 500)


async def test_the_cap_is_per_namespace(cache: Cache, valkey: RedisProcess) -> None:
    set_cap(valkey, "tiny", 2)
    for i in range(5):
        await cache.set("tiny", f"k{i}", b"v")
        await cache.set("roomy", f"k{i}", b"v")
    tiny, roomy = await cache.stats("tiny"), await cache.stats("roomy")
    assert (tiny.entries, tiny.evictions, tiny.max_entries) == (2, 3, 2)
    assert (roomy.entries, roomy.evictions, roomy.max_entries) == (5, 0, 10_000)


async def test_expired_entries_free_their_slot_without_counting_as_evictions(
    cache: Cache, valkey: RedisProcess
) -> None:
    set_cap(valkey, "recipes", 3)
    await cache.batch_set("recipes", [entry("a", b"v"), entry("b", b"v")], ttl=1)
    await cache.set("recipes", "c", b"v")
    await asyncio.sleep(1.1)
    assert await cache.batch_set("recipes", [entry("d", b"v"), entry("e", b"v")]) == 0
    stats = await cache.stats("recipes")
    assert (stats.entries, stats.evictions) == (3, 0)


async def test_the_lru_index_expires_with_its_entries(cache: Cache, valkey: RedisProcess) -> None:
    await cache.batch_set("recipes", [entry(f"k{i}", b"v") for i in range(10)], ttl=1)
    await cache.set("recipes", "last", b"v", ttl=2)
    raw = cache_db(valkey)
    index = [
        cache_keys.lru_key("recipes", 0),
        cache_keys.expiry_key("recipes", 0),
        cache_keys.sizes_key("recipes", 0),
    ]
    for name in index:
        # The index lives exactly as long as its longest-lived entry, and no longer.
        assert 1000 < raw.pttl(name) <= 2000, name

    await asyncio.sleep(2.1)
    assert raw.exists(*index) == 0
    assert not [key for key in raw.scan_iter() if key.startswith(b"cache:")]


async def test_a_lowered_cap_is_reached_in_bounded_steps(
    cache: Cache, valkey: RedisProcess
) -> None:
    set_cap(valkey, "recipes", 5000)
    for start in range(0, 1500, 100):
        await cache.batch_set("recipes", [entry(f"k{i}", b"v") for i in range(start, start + 100)])
    set_cap(valkey, "recipes", 10)

    # One write evicts at most 1000 entries beyond its own, so no script runs for long.
    assert await cache.set("recipes", "new1", b"v") == 1001
    assert (await cache.stats("recipes")).entries == 500
    assert await cache.set("recipes", "new2", b"v") == 491
    stats = await cache.stats("recipes")
    assert (stats.entries, stats.evictions) == (10, 1492)
    # The oldest went first: what is left is the newest eight of the fill and the new keys.
    assert present(valkey, "recipes", [f"k{i}" for i in range(1500)]) == {
        f"k{i}" for i in range(1492, 1500)
    }
