"""Namespace statistics and the cache's Prometheus counters add up exactly after a
scripted workload (issue 6)."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest

from tests.harness.redis_servers import RedisProcess
from tests.integration.cache_support import Cache, cache_db, entry, expect_error
from tokenservice.v1 import cache_service_pb2 as pb
from tokenservice_server.app import Application
from tokenservice_server.storage import cache_keys


@pytest.fixture
async def cache(channel: grpc.aio.Channel, admin_token: str) -> Cache:
    return Cache(channel, admin_token)


def cache_metrics(app: Application) -> dict[tuple[str, ...], float]:
    """The tokenservice_cache_* samples of /metrics, by (name, label values...)."""
    assert app.addresses is not None
    url = f"http://{app.addresses.metrics_host}:{app.addresses.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, ...], float] = {}
    for name, labels, value in re.findall(r"^(tokenservice_cache_\w+)\{(.*)\} (\S+)$", text, re.M):
        samples[(name, *re.findall(r'="([^"]*)"', labels))] = float(value)
    return samples


async def test_stats_and_counters_add_up_after_a_scripted_workload(
    server: Application, cache: Cache, valkey: RedisProcess
) -> None:
    raw = cache_db(valkey)
    raw.hset(cache_keys.CONFIG, "recipes:max_entries", 4)

    # Recency after each step in comments, least recently used first.
    await cache.set("recipes", "a", b"a" * 10)  # a
    await cache.set("recipes", "b", b"b" * 20)  # a b
    await cache.set("recipes", "c", b"c" * 30)  # a b c
    assert (await cache.get("recipes", "a")).found  # b c a; hit
    assert not (await cache.get("recipes", "x")).found  # miss
    found = [item.found for item in await cache.batch_get("recipes", ["a", "b", "y", "z", "a"])]
    assert found == [True, True, False, False, True]  # c b a; 3 hits, 2 misses
    evicted = await cache.batch_set("recipes", [entry("d", b"d" * 40), entry("e", b"e" * 50)])
    assert evicted == 1  # c b a d e, full at 4: c goes
    assert await cache.delete("recipes", "b") is True  # a d e
    assert await cache.delete("recipes", "b") is False
    await cache.set("recipes", "a", b"A" * 15)  # d e a; overwrite
    lease = await cache.get("recipes", "c", lock_if_missing=True)  # miss
    assert lease.lease_status == pb.LEASE_STATUS_GRANTED
    await cache.set("other", "k", b"other")
    await cache.get("other", "k")
    # Refused calls count nowhere (their namespace label could be anything).
    await expect_error(cache.get("Bad!", "k"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")

    stats = await cache.stats("recipes")
    assert (stats.hits, stats.misses, stats.hit_ratio) == (4, 4, 0.5)
    assert (stats.entries, stats.evictions, stats.max_entries) == (3, 1, 4)
    assert stats.bytes == 40 + 50 + 15
    assert stats.invalidations == 0
    # The counters live in cache_stats, one field per namespace and counter.
    assert raw.hget(cache_keys.STATS, "recipes:hits") == b"4"
    assert raw.hget(cache_keys.STATS, "recipes:misses") == b"4"
    assert raw.hget(cache_keys.STATS, "recipes:evictions") == b"1"

    assert await cache.invalidate("recipes") == 3
    after = await cache.stats("recipes")
    assert (after.hits, after.misses, after.evictions) == (4, 4, 1)  # history is kept
    assert (after.entries, after.bytes, after.invalidations) == (0, 0, 1)
    other = await cache.stats("other")
    assert (other.hits, other.misses, other.entries, other.bytes) == (1, 0, 1, 5)
    empty = await cache.stats("never-used")
    assert (empty.hits, empty.misses, empty.hit_ratio, empty.entries) == (0, 0, 0.0, 0)

    requests = "tokenservice_cache_requests"
    assert cache_metrics(server) == {
        (f"{requests}_total", "recipes", "set"): 6.0,
        (f"{requests}_total", "recipes", "hit"): 4.0,
        (f"{requests}_total", "recipes", "miss"): 4.0,
        (f"{requests}_total", "recipes", "delete"): 2.0,
        (f"{requests}_total", "recipes", "invalidate"): 1.0,
        (f"{requests}_total", "other", "set"): 1.0,
        (f"{requests}_total", "other", "hit"): 1.0,
        ("tokenservice_cache_evictions_total", "recipes"): 1.0,
    }
