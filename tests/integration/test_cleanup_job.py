"""`tokenservice cleanup tokens|cache`: removes exactly what expired, at a cost that
follows the expired count, once even when two runs race, and safe beside live traffic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any

import redis as redis_sync
from redis.asyncio import Redis

from tests.harness.redis_servers import RedisProcess
from tests.helpers import tool
from tests.integration.cache_support import cache_caller, entry
from tests.integration.oauth2_support import CC, oauth_server
from tokenservice_server.jobs.cleanup import (
    AUTH_CLEANUP_METRICS,
    CACHE_CLEANUP_METRICS,
    cleanup_cache,
    cleanup_tokens,
)
from tokenservice_server.storage import keys

INDEX_SETS = ("client_tokens", "family", "session_tokens", "subject_tokens")


def _digest(n: int) -> str:
    return f"{n:064x}"


def _populate(client: redis_sync.Redis, total: int, expired: int) -> dict[str, set[str]]:
    """``total`` tokens in the real layout (cleanup and index sets), ``expired`` of them with
    past expiries and no record; returns what every index set must hold afterwards."""
    now = int(time.time())
    survivors: dict[str, set[str]] = {}
    index_entries: dict[str, int] = {}
    plain: dict[str, dict[str, int]] = {keys.TOKEN_CLEANUP: {}, keys.REFRESH_CLEANUP: {}}
    sets: dict[str, set[str]] = {}
    sessions: dict[str, int] = {}
    for n in range(total):
        gone = n % (total // expired) == 0 and n // (total // expired) < expired
        kind = "a" if n % 3 else "r"
        member = f"{kind}:{_digest(n)}"
        client_id = f"client-{n % 50}"
        family = f"fam{n // 4}" if n % 5 else ""
        session = f"sess{n // 10}" if n % 7 == 0 else ""
        subject = f"user|{n % 997}" if family else ""
        expiry = now - 100 if gone else now + 3600
        index_entries[f"{member}|{client_id}|{family}|{session}|{subject}"] = expiry
        plain[keys.TOKEN_CLEANUP if kind == "a" else keys.REFRESH_CLEANUP][member] = expiry
        names = [f"auth:client_tokens:{client_id}"]
        names += [f"auth:family:{family}"] if family else []
        names += [f"auth:session_tokens:{session}"] if session else []
        names += [f"auth:subject_tokens:{subject}"] if subject else []
        for name in names:
            sets.setdefault(name, set()).add(member)
            if not gone:
                survivors.setdefault(name, set()).add(member)
        if session:
            sessions[session] = min(sessions.get(session, expiry), expiry)
    with client.pipeline(transaction=False) as pipe:
        for name, mapping in [(keys.INDEX_CLEANUP, index_entries), *plain.items()]:
            items = list(mapping.items())
            for start in range(0, len(items), 10_000):
                pipe.zadd(name, dict(items[start : start + 10_000]))
        pipe.zadd(keys.SESSION_CLEANUP, sessions)
        for name, members in sets.items():
            pipe.sadd(name, *members)
            pipe.expire(name, 7200)
        pipe.execute()
    return survivors


def _index_sets(client: redis_sync.Redis) -> dict[str, set[Any]]:
    found: dict[str, set[Any]] = {}
    for prefix in INDEX_SETS:
        for name in client.scan_iter(match=f"auth:{prefix}:*", count=5000):
            found[name] = client.smembers(name)  # type: ignore[assignment]
    return found


def _script_calls(client: redis_sync.Redis) -> int:
    """Scripts run (an EVALSHA refused with NOSCRIPT, before the script is loaded, is not)."""
    stats = client.info("commandstats")
    return sum(
        int(entry.get("calls", 0)) - int(entry.get("failed_calls", 0))
        for entry in (stats.get(f"cmdstat_{name}", {}) for name in ("evalsha", "eval"))
    )


async def test_cleanup_removes_exactly_the_expired_entries_at_a_cost_of_what_expired(
    valkey: RedisProcess,
) -> None:
    sync = valkey.client()
    survivors = _populate(sync, total=100_000, expired=1_000)
    # A token whose expiry score passed but whose record lives on (clock skew) is kept.
    skewed = "a:" + "f" * 64
    sync.hset("auth:access_token:" + "f" * 64, "c", "client-1")
    sync.expire("auth:access_token:" + "f" * 64, 60)
    sync.zadd(keys.INDEX_CLEANUP, {f"{skewed}|client-1|||": int(time.time()) - 5})
    sync.sadd("auth:client_tokens:client-1", skewed)
    survivors["auth:client_tokens:client-1"].add(skewed)
    before_entries = sync.zcard(keys.INDEX_CLEANUP)
    calls_before = _script_calls(sync)

    redis = Redis.from_url(valkey.url)
    try:
        run_started = time.time()
        result = await cleanup_tokens(redis)
        run_ended = time.time()
    finally:
        await redis.aclose()

    assert result.status == "done"
    assert result.removed["index_entries"] == 1_000
    assert result.removed["access_tokens"] + result.removed["refresh_tokens"] == 1_000
    assert result.rescheduled == 1
    # 1,001 expired entries among 100,000: three batches of 500, not 200 (the last one
    # also sees that nothing is left), plus the lock release.
    assert result.batches == 3
    # Cost follows what expired: the call count above, not wall time (timings belong
    # in benchmarks; this machine is shared).
    assert _script_calls(sync) - calls_before == 4
    assert sync.zcard(keys.INDEX_CLEANUP) == before_entries - 1_000
    assert _index_sets(sync) == survivors
    assert sync.zcount(keys.INDEX_CLEANUP, "-inf", int(time.time())) == 0
    assert float(sync.zscore(keys.INDEX_CLEANUP, f"{skewed}|client-1|||") or 0) > time.time()
    metrics = sync.hgetall(AUTH_CLEANUP_METRICS)
    assert metrics["last_removed_index_entries"] == "1000"
    assert metrics["runs_total"] == "1"
    assert run_started - 1 <= float(metrics["last_run"]) <= run_ended + 1

    # Nothing left: the next run is one batch.
    redis = Redis.from_url(valkey.url)
    try:
        again = await cleanup_tokens(redis)
    finally:
        await redis.aclose()
    assert again.batches == 1
    assert sum(again.removed.values()) == 0


async def test_concurrent_cleanup_runs_do_no_double_work(valkey: RedisProcess) -> None:
    sync = valkey.client()
    _populate(sync, total=20_000, expired=5_000)
    clients = [Redis.from_url(valkey.url) for _ in range(3)]
    try:
        # Small batches, so the runs overlap; the third waits for the lock.
        results = await asyncio.gather(
            cleanup_tokens(clients[0], batch=100),
            cleanup_tokens(clients[1], batch=100),
            cleanup_tokens(clients[2], batch=100, wait=30),
        )
    finally:
        for client in clients:
            await client.aclose()
    # No double work, whichever run took the lock first: the removals add up exactly.
    assert sum(result.removed["index_entries"] for result in results) == 5_000
    # The waiting run either won the lock or waited for it; of the two that do not
    # wait, at most one ran and at least one found the lock taken.
    assert results[2].status == "done"
    statuses = [result.status for result in results[:2]]
    assert statuses.count("done") <= 1
    assert "skipped" in statuses
    assert sync.zcount(keys.INDEX_CLEANUP, "-inf", int(time.time())) == 0
    assert not sync.exists("auth_cleanup_lock")


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    clean.update(
        TOKENSERVICE_LOG_FORMAT="json",
        TOKENSERVICE_AUTH__SECRET_PEPPER="cleanup-test-pepper-0123456789abcdef0123",
    )
    return subprocess.run(
        [tool("tokenservice"), *args, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
    )


async def test_real_tokens_leave_exactly_their_index_sets(
    valkey: RedisProcess, app_factory: Any
) -> None:
    """Entries written by the real issuing scripts name exactly the sets that hold the token."""
    async with oauth_server(app_factory, valkey) as oauth:
        web = await oauth.client()
        session = await oauth.authorize(web, subject="bob")
        first = await oauth.redeem(session)
        await oauth.refresh(web, first.refresh_token)
        service = await oauth.client(grant_types=(CC,), redirect_uris=())
        await oauth.client_credentials(service)
    sync = valkey.client(decode_responses=False)
    # Refresh tokens: '<r:hex>|...' entries in auth_index_cleanup; access tokens: their
    # auth_token_cleanup member is the entry, with the compact member 'A' + raw digest.
    refresh_entries: list[bytes] = sync.zrange(keys.INDEX_CLEANUP, 0, -1)  # type: ignore[assignment]
    access_entries: list[bytes] = sync.zrange(keys.TOKEN_CLEANUP, 0, -1)  # type: ignore[assignment]
    # 2 refresh (code flow, rotation); 2 access of the code flow, the admin's, the service's
    assert len(refresh_entries) == 2
    assert len(access_entries) >= 4
    assert all(entry_.startswith(b"r:") for entry_ in refresh_entries)
    assert all(entry_.startswith(b"A") for entry_ in access_entries)
    for entry_ in refresh_entries + access_entries:
        cut = 33 if entry_.startswith(b"A") else entry_.index(b"|")
        member = entry_[:cut]
        assert entry_[cut : cut + 1] == b"|"
        client_id, family, session_id, subject = entry_[cut + 1 :].decode().split("|", 3)
        assert sync.sismember(f"auth:client_tokens:{client_id}", member)
        for prefix, part in (("family", family), ("session_tokens", session_id)):
            if part:
                assert sync.sismember(f"auth:{prefix}:{part}", member)
        if subject:
            assert sync.sismember(f"auth:subject_tokens:{subject}", member)
    # Expire everything by hand (records gone, expiries in the past): the job empties
    # every index set, including the rotated refresh token's memberships.
    now = int(time.time())
    for index, entries in (
        (keys.INDEX_CLEANUP, refresh_entries),
        (keys.TOKEN_CLEANUP, access_entries),
    ):
        for entry_ in entries:
            kind, token_digest = keys.member_digest(entry_)
            sync.delete(f"auth:{'access' if kind == 'a' else 'refresh'}_token:{token_digest}")
            sync.zadd(index, {entry_: now - 1})
    result = _cli("cleanup", "tokens", "--json", url=valkey.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "done"
    assert report["removed"]["index_entries"] == len(refresh_entries)
    assert report["removed"]["access_tokens"] == len(access_entries)
    assert _index_sets(sync) == {}
    assert sync.zcard(keys.TOKEN_CLEANUP) == sync.zcard(keys.INDEX_CLEANUP) == 0
    assert "cleanup_done" in result.stderr


async def test_cache_cleanup_drops_expired_index_entries_and_retired_generations(
    server: Any, valkey: RedisProcess, admin_token: str
) -> None:
    assert server.addresses is not None
    import grpc

    async with grpc.aio.insecure_channel(server.addresses.grpc_target) as channel:
        cache = await cache_caller(
            channel,
            admin_token,
            "cleaner",
            [f"cache:{ns}:write" for ns in ("short", "long", "gone")],
        )
        for start in range(0, 300, 100):
            batch = [entry(f"k{i}", b"v" * 10) for i in range(start, start + 100)]
            await cache.batch_set("short", batch, ttl=1)
            await cache.batch_set("short", [entry(f"keep{start}", b"k")], ttl=600)
            await cache.batch_set("gone", batch[:50] if start == 200 else batch, ttl=600)
        await cache.batch_set("long", [entry(f"k{i}", b"v" * 10) for i in range(50)], ttl=600)
        await cache.invalidate("gone")
    db = valkey.client(db=1)
    await asyncio.sleep(1.2)
    result = _cli("cleanup", "cache", "--json", url=valkey.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["removed"]["expired_entries"] == 300, (
        report,
        sorted(db.keys("cache_*")),
        db.hgetall("cache_stats"),
    )
    assert report["removed"]["retired_entries"] == 250
    assert report["removed"]["retired_generations"] == 1
    assert db.zrange("cache_lru:short:0", 0, -1) == ["keep0", "keep100", "keep200"]
    assert db.zcard("cache_exp:short:0") == 3
    assert db.hlen("cache_sizes:short:0") == 3
    assert db.hget("cache_stats", "short:bytes") == "3"
    assert db.zcard("cache_lru:long:0") == 50
    assert not db.exists("cache_retired:gone", "cache_lru:gone:0", "cache_exp:gone:0")
    assert not list(db.scan_iter(match="cache:gone:*"))
    assert db.hget(CACHE_CLEANUP_METRICS, "last_removed_expired_entries") == "300"

    # Again: nothing to do; and the direct API reports the same shape.
    redis = Redis.from_url(valkey.url, db=1)
    try:
        again = await cleanup_cache(redis)
    finally:
        await redis.aclose()
    assert sum(again.removed.values()) == 0
