"""CacheService against a real server on a real Valkey: values, TTLs, batches, the
existing ``cache:{namespace}:{key}`` layout, fill leases, and one Redis round trip per RPC
(issue 6)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.harness.grpc_server import (
    AppFactory,
    bootstrap_admin,
    hot_token_cache_in_use,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tests.helpers import eventually
from tests.integration.cache_support import (
    AUTH_DB,
    CACHE_DB,
    Cache,
    CommandLog,
    cache_db,
    entry,
    redis_target,
)
from tokenservice.v1 import cache_service_pb2 as pb
from tokenservice_server.storage import cache_keys

DAY = 86_400
_NOT_RPC = {"PING", "HELLO", "CLIENT"}


@pytest.fixture
async def cache(channel: grpc.aio.Channel, admin_token: str) -> Cache:
    """The admin caller (cache:*:read and cache:*:write)."""
    return Cache(channel, admin_token)


async def test_a_value_reads_back_as_the_same_bytes_with_the_default_ttl(
    cache: Cache, valkey: RedisProcess
) -> None:
    value = bytes(range(256)) * 3
    assert await cache.set("recipes", "popular", value) == 0

    hit = await cache.get("recipes", "popular")
    assert (hit.found, hit.value, hit.remaining_ttl_seconds) == (True, value, DAY)
    assert hit.lease_status == pb.LEASE_STATUS_UNSPECIFIED
    # SPEC section 4: the value lives at cache:{namespace}:{key}, with its TTL.
    raw = cache_db(valkey)
    assert raw.get(b"cache:recipes:popular") == value
    assert DAY * 1000 - 5000 < raw.pttl(b"cache:recipes:popular") <= DAY * 1000

    miss = await cache.get("recipes", "unknown")
    assert (miss.found, miss.value, miss.remaining_ttl_seconds) == (False, b"", 0)


async def test_values_expire_after_their_ttl(cache: Cache) -> None:
    await cache.set("recipes", "short", b"soon gone", ttl=1)
    await cache.batch_set(
        "recipes",
        [entry("own-ttl", b"a", ttl=1), entry("batch-ttl", b"b"), entry("long", b"c", ttl=600)],
        ttl=2,
    )
    lookups = await cache.batch_get("recipes", ["short", "own-ttl", "batch-ttl", "long"])
    assert [(item.found, item.remaining_ttl_seconds) for item in lookups] == [
        (True, 1),
        (True, 1),
        (True, 2),
        (True, 600),
    ]

    async def expired() -> bool:
        found = await cache.batch_get("recipes", ["short", "own-ttl", "batch-ttl"])
        return not any(item.found for item in found)

    await eventually(expired, timeout=5, interval=0.1)
    assert (await cache.get("recipes", "long")).found
    assert (await cache.stats("recipes")).entries == 1


async def test_delete_says_whether_a_live_value_was_removed(cache: Cache) -> None:
    await cache.set("recipes", "doomed", b"x")
    assert await cache.delete("recipes", "doomed") is True
    assert await cache.delete("recipes", "doomed") is False
    assert await cache.delete("recipes", "never-set") is False
    assert not (await cache.get("recipes", "doomed")).found
    assert (await cache.stats("recipes")).entries == 0


async def test_batch_get_answers_every_key_in_request_order(cache: Cache) -> None:
    await cache.batch_set("recipes", [entry("a", b"1"), entry("b", b"2")])
    lookups = await cache.batch_get("recipes", ["b", "missing", "a", "b"])
    assert [(item.key, item.found, item.value) for item in lookups] == [
        ("b", True, b"2"),
        ("missing", False, b""),
        ("a", True, b"1"),
        ("b", True, b"2"),
    ]
    assert await cache.batch_get("recipes", []) == []


async def test_in_a_batch_set_the_later_entry_for_a_key_wins(cache: Cache) -> None:
    await cache.batch_set("recipes", [entry("k", b"first"), entry("j", b"j"), entry("k", b"last")])
    assert (await cache.get("recipes", "k")).value == b"last"
    assert (await cache.stats("recipes")).entries == 2


async def test_namespaces_are_separate(cache: Cache) -> None:
    await cache.set("recipes", "k", b"recipes")
    await cache.set("billing", "k", b"billing")
    assert (await cache.get("recipes", "k")).value == b"recipes"
    assert (await cache.get("billing", "k")).value == b"billing"
    await cache.invalidate("recipes")
    assert not (await cache.get("recipes", "k")).found
    assert (await cache.get("billing", "k")).value == b"billing"


async def test_existing_cache_keys_read_as_namespace_and_key(
    cache: Cache, valkey: RedisProcess
) -> None:
    # Written before CacheService existed (SPEC section 4: namespace resource).
    raw = cache_db(valkey)
    raw.set(b"cache:resource:popular_recipes", b"[1,2,3]", ex=3600)
    raw.set(b"cache:resource:no_ttl", b"legacy")

    hit = await cache.get("resource", "popular_recipes")
    assert (hit.found, hit.value) == (True, b"[1,2,3]")
    assert 3590 <= hit.remaining_ttl_seconds <= 3600
    # A value found without a TTL is given the default one: no cache key lives forever.
    assert (await cache.get("resource", "no_ttl")).remaining_ttl_seconds == DAY
    assert 0 < raw.pttl(b"cache:resource:no_ttl") <= DAY * 1000
    stats = await cache.stats("resource")
    assert (stats.entries, stats.bytes, stats.hits) == (2, len(b"[1,2,3]") + len(b"legacy"), 2)

    # Longer than the contract's int32 of seconds can say (~68 years): capped, not an error.
    raw.set(b"cache:resource:ancient", b"v", ex=100 * 365 * DAY)
    assert (await cache.get("resource", "ancient")).remaining_ttl_seconds == 2**31 - 1

    # A hash under a cache name is not a cache value: a miss, and the write replaces it.
    raw.hset(b"cache:resource:a_hash", b"field", b"value")
    assert not (await cache.get("resource", "a_hash")).found
    await cache.set("resource", "a_hash", b"now a string")
    assert (await cache.get("resource", "a_hash")).value == b"now a string"


async def test_after_invalidation_values_live_under_the_next_generation(
    cache: Cache, valkey: RedisProcess
) -> None:
    await cache.set("recipes", "k", b"old")
    await cache.invalidate("recipes")
    await cache.set("recipes", "k", b"new")
    raw = cache_db(valkey)
    assert raw.get(cache_keys.value_key("recipes", 1, "k").encode()) == b"new"
    assert raw.get(b"cache:recipes@1:k") == b"new"
    assert raw.hget(cache_keys.GENERATIONS, "recipes") == b"1"
    assert (await cache.get("recipes", "k")).value == b"new"


async def test_one_caller_gets_the_fill_lease_and_its_write_releases_it(
    cache: Cache, valkey: RedisProcess
) -> None:
    lock = {"lock_if_missing": True}
    answers = await asyncio.gather(*(cache.get("recipes", "expensive", **lock) for _ in range(20)))
    granted = [a for a in answers if a.lease_status == pb.LEASE_STATUS_GRANTED]
    waiting = [a for a in answers if a.lease_status == pb.LEASE_STATUS_HELD_ELSEWHERE]
    assert (len(granted), len(waiting)) == (1, 19)
    assert all(not a.found and not a.lease_token for a in waiting)
    token = granted[0].lease_token
    assert len(token) >= 32

    # Without lock_if_missing a miss is just a miss.
    plain = await cache.get("recipes", "expensive")
    assert (plain.found, plain.lease_status, plain.lease_token) == (
        False,
        pb.LEASE_STATUS_UNSPECIFIED,
        "",
    )
    lease = cache_keys.lease_key("recipes", 0, "expensive").encode()
    raw = cache_db(valkey)
    assert raw.get(lease) == token.encode()
    assert 0 < raw.pttl(lease) <= 10_000  # the default lease TTL

    await cache.set("recipes", "expensive", b"computed once", lease_token=token)
    assert raw.exists(lease) == 0
    after = await cache.get("recipes", "expensive", **lock)
    assert (after.found, after.value, after.lease_status) == (
        True,
        b"computed once",
        pb.LEASE_STATUS_UNSPECIFIED,
    )


async def test_an_expired_lease_passes_to_the_next_caller(cache: Cache) -> None:
    first = await cache.get("recipes", "k", lock_if_missing=True, lease_ttl_seconds=1)
    assert first.lease_status == pb.LEASE_STATUS_GRANTED
    assert (
        await cache.get("recipes", "k", lock_if_missing=True)
    ).lease_status == pb.LEASE_STATUS_HELD_ELSEWHERE
    await asyncio.sleep(1.1)
    second = await cache.get("recipes", "k", lock_if_missing=True)
    assert second.lease_status == pb.LEASE_STATUS_GRANTED
    assert second.lease_token != first.lease_token

    # The first holder's late write still succeeds, and leaves the second one's lease alone.
    await cache.set("recipes", "k", b"late", lease_token=first.lease_token)
    assert (await cache.get("recipes", "k")).value == b"late"
    await cache.delete("recipes", "k")
    third = await cache.get("recipes", "k", lock_if_missing=True)
    assert third.lease_status == pb.LEASE_STATUS_HELD_ELSEWHERE


async def test_every_rpc_is_one_round_trip(app_factory: AppFactory, valkey: RedisProcess) -> None:
    """One EVALSHA on the cache DB and nothing on the auth DB: the caller's bearer token
    comes from the hot-token cache after its first lookup (token_cache, on by default;
    a long TTL here so a slow run does not expire it between calls)."""
    # A long health interval keeps the probe's PINGs out of the window.
    app = await app_factory(redis={"url": valkey.url}, health_interval=60, token_cache={"ttl": 60})
    await hot_token_cache_in_use(app)
    admin = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(redis_target(app)) as channel:
        cache = Cache(channel, await issue_token(channel, admin))
        calls = {
            "SetValue": lambda: cache.set("recipes", "k", b"v"),
            "GetValue": lambda: cache.get("recipes", "k"),
            "GetValue (miss, lease)": lambda: cache.get("recipes", "x", lock_if_missing=True),
            "BatchSetValues": lambda: cache.batch_set(
                "recipes", [entry(f"b{i}", b"v") for i in range(50)]
            ),
            "BatchGetValues": lambda: cache.batch_get("recipes", [f"b{i}" for i in range(50)]),
            "DeleteValue": lambda: cache.delete("recipes", "k"),
            "GetNamespaceStats": lambda: cache.stats("recipes"),
            "InvalidateNamespace": lambda: cache.invalidate("recipes"),
        }
        for call in calls.values():
            await call()  # loads each script (EVALSHA, NOSCRIPT, SCRIPT LOAD) once
        for name, call in calls.items():
            with CommandLog(valkey) as log:
                await call()
            assert log.requests(CACHE_DB) == ["EVALSHA"], (name, log.requests(CACHE_DB))
            # Not requests of the RPC: the revocation feed's keepalive PINGs, and the
            # handshake of the connection CommandLog opens to stop itself.
            auth_requests = [c for c in log.requests(AUTH_DB) if c not in _NOT_RPC]
            assert auth_requests == [], (name, auth_requests)


async def test_every_key_of_the_cache_database_expires(cache: Cache, valkey: RedisProcess) -> None:
    await cache.batch_set("recipes", [entry(f"k{i}", b"v" * i) for i in range(20)], ttl=300)
    await cache.get("recipes", "k1")
    await cache.get("recipes", "missing", lock_if_missing=True)
    await cache.delete("recipes", "k2")
    await cache.invalidate("recipes")
    await cache.set("recipes", "k3", b"v")
    await cache.stats("recipes")

    raw = cache_db(valkey)
    # Only the per-namespace bookkeeping hashes are permanent (one field per namespace).
    permanent = {cache_keys.GENERATIONS.encode(), cache_keys.STATS.encode()}
    without_ttl = [key for key in raw.scan_iter() if raw.pttl(key) < 0]
    assert set(without_ttl) <= permanent, without_ttl
    names = {key.split(b":")[0] for key in raw.scan_iter()}
    assert names >= {b"cache", b"cache_lru", b"cache_exp", b"cache_sizes", b"cache_lease"}
