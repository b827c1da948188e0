"""The GCRA limiter (lua/_gcra.lua) in its two scripts, against a real Valkey: exact
bursts, even refill, all-or-nothing buckets, per-client overrides, bounded keys, and
exactness under concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError

from tests.harness.redis_servers import RedisProcess
from tokenservice_server.domain.tokens import TokenKind, TokenRecord
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.storage.token_store import (
    RedisTokenStore,
    decode_fields,
    encode_access_token,
)

CLIENT = "auth:client:svc"
BUCKET = "auth:rate_limit:issue_client:svc"
IP_BUCKET = "auth:rate_limit:issue_ip:192.0.2.1"


@pytest.fixture
async def client(valkey: RedisProcess) -> AsyncIterator[Redis]:
    redis = Redis.from_url(valkey.url, decode_responses=True)
    yield redis
    await redis.aclose()


@pytest.fixture
def scripts(client: Redis) -> ScriptRegistry:
    return ScriptRegistry(client)


async def _limit(
    scripts: ScriptRegistry, client_limit: int, ip_limit: int = 0, period_ms: int = 60_000
) -> list[int]:
    reply: list[int] = await scripts.call(
        "rate_limit", keys=[CLIENT, BUCKET, IP_BUCKET], args=[period_ms, client_limit, ip_limit]
    )
    return reply


async def test_a_full_bucket_admits_exactly_its_limit(scripts: ScriptRegistry) -> None:
    replies = [await _limit(scripts, 5) for _ in range(7)]

    assert [allowed for allowed, _, _ in replies] == [1, 1, 1, 1, 1, 0, 0]
    # The next one conforms one emission interval (60 s / 5) after the first request.
    _, wait_us, refused_by = replies[5]
    assert 11_000_000 < wait_us <= 12_000_000
    assert refused_by == 2  # KEYS[2], the client's bucket


async def test_the_bucket_refills_evenly(scripts: ScriptRegistry) -> None:
    # 2 per 200 ms: one request back every 100 ms.
    assert [(await _limit(scripts, 2, period_ms=200))[0] for _ in range(3)] == [1, 1, 0]

    await asyncio.sleep(0.11)

    assert [(await _limit(scripts, 2, period_ms=200))[0] for _ in range(2)] == [1, 0]


async def test_a_refusal_takes_nothing_from_the_other_buckets(
    scripts: ScriptRegistry, client: Redis
) -> None:
    assert (await _limit(scripts, 1, ip_limit=10))[0] == 1
    ip_state = await client.get(IP_BUCKET)

    allowed, _, refused_by = await _limit(scripts, 1, ip_limit=10)

    assert (allowed, refused_by) == (0, 2)
    assert await client.get(IP_BUCKET) == ip_state  # the IP bucket was not charged


async def test_the_longest_wait_names_the_refusing_bucket(scripts: ScriptRegistry) -> None:
    await _limit(scripts, 10, ip_limit=1)

    allowed, wait_us, refused_by = await _limit(scripts, 10, ip_limit=1)

    assert (allowed, refused_by) == (0, 3)  # KEYS[3], the IP bucket
    assert 59_000_000 < wait_us <= 60_000_000


async def test_the_client_record_overrides_the_default(
    scripts: ScriptRegistry, client: Redis
) -> None:
    await client.hset(CLIENT, "rate_limit", "2")  # requests per minute

    replies = [await _limit(scripts, 1000, period_ms=3_600_000) for _ in range(3)]

    assert [allowed for allowed, _, _ in replies] == [1, 1, 0]
    assert 29_000_000 < replies[2][1] <= 30_000_000


async def test_unlimited_buckets_leave_no_keys(scripts: ScriptRegistry, client: Redis) -> None:
    assert [(await _limit(scripts, 0))[0] for _ in range(100)] == [1] * 100
    assert await client.exists(BUCKET, IP_BUCKET) == 0


async def test_buckets_expire_when_full_again(scripts: ScriptRegistry, client: Redis) -> None:
    await _limit(scripts, 4, ip_limit=100, period_ms=60_000)

    # One request used: the client bucket is full again after 60 s / 4, the IP's sooner.
    assert 14_000 < await client.pttl(BUCKET) <= 15_000
    assert 0 < await client.pttl(IP_BUCKET) <= 600


async def test_a_bad_period_is_refused(scripts: ScriptRegistry, client: Redis) -> None:
    with pytest.raises(ResponseError, match="period must be a positive number"):
        await _limit(scripts, 5, period_ms=0)
    assert await client.exists(BUCKET) == 0


async def test_concurrent_requests_are_admitted_exactly(valkey: RedisProcess) -> None:
    # 200 requests on 50 connections at once, limit 50: never 51, never 49.
    pool = BlockingConnectionPool.from_url(valkey.url, max_connections=50)
    redis = Redis(connection_pool=pool)
    try:
        scripts = ScriptRegistry(redis)
        await _limit(scripts, 0)  # load the script first
        replies = await asyncio.gather(
            *(_limit(scripts, 50, period_ms=3_600_000) for _ in range(200))
        )
    finally:
        await redis.aclose()
        await pool.aclose()

    assert sum(int(allowed) for allowed, _, _ in replies) == 50


# -- check_access_token.lua -----------------------------------------------------------------

TOKEN = "auth:access_token:d1"
BLACKLIST = "auth:blacklist:d1"
CHECK_IP = "auth:rate_limit:ip:192.0.2.9"


async def _check(
    scripts: ScriptRegistry, *, ip: int = 0, client_limit: int = 0, route: int = 0, key: str = ""
) -> list[object]:
    reply: list[object] = await scripts.call(
        "check_access_token",
        keys=[TOKEN, BLACKLIST, CHECK_IP],
        args=[3_600_000, ip, client_limit, route, key, "auth:"],
    )
    return reply


async def _store(client: Redis, expires_in: int = 900) -> None:
    now = int(time.time())
    await client.hset(TOKEN, mapping={"c": "svc", "s": "a b", "i": now, "e": now + expires_in})
    await client.expire(TOKEN, 900)


async def test_check_returns_the_live_token_with_its_fields(
    scripts: ScriptRegistry, client: Redis
) -> None:
    await _store(client)

    reply = await _check(scripts)

    assert reply[:3] == [1, 0, ""]
    assert reply[3:5] == ["svc", "a b"]
    assert reply[7:13] == ["", "", "", "", "", "0"]  # absent fields, then no own limit


async def test_check_returns_every_field_in_the_order_the_store_decodes(
    scripts: ScriptRegistry, client: Redis
) -> None:
    now = int(time.time())
    record = TokenRecord(
        digest="d1",
        client_id="svc",
        scopes=frozenset({"a", "b"}),
        issued_at=now,
        expires_at=now + 900,
        jti="a-jti-of-its-own",
        subject="alice",
        audiences=("api", "web"),
        session_id="s1",
        family_id="f1",
    )
    fields = encode_access_token(record)
    await client.hset(TOKEN, mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
    await client.hset("auth:client:svc", "rate_limit", "7")

    reply = await _check(scripts)

    assert decode_fields("d1", [str(value).encode() for value in reply[3:12]]) == record
    assert reply[12] == "7"


@pytest.mark.parametrize("state", ["unknown", "revoked", "expired"])
async def test_check_finds_no_live_token(
    scripts: ScriptRegistry, client: Redis, state: str
) -> None:
    if state != "unknown":
        await _store(client, expires_in=-1 if state == "expired" else 900)
    if state == "revoked":
        await client.set(BLACKLIST, "1", ex=900)

    assert await _check(scripts) == [0, 0, ""]


async def test_check_counts_the_ip_even_without_a_live_token(scripts: ScriptRegistry) -> None:
    assert (await _check(scripts, ip=1))[0] == 0  # unknown token, IP charged
    assert (await _check(scripts, ip=1))[:3][0::2] == [-1, "ip"]


async def test_check_derives_the_clients_buckets_from_the_token(
    scripts: ScriptRegistry, client: Redis
) -> None:
    await _store(client)
    await client.hset("auth:client:svc", "rate_limit", "1")  # overrides client_limit

    first = await _check(scripts, client_limit=100, route=5, key="orders")
    second = await _check(scripts, client_limit=100, route=5, key="orders")

    assert first[0] == 1
    assert (second[0], second[2]) == (-1, "client")
    assert 0 < await client.pttl("auth:rate_limit:client:svc") <= 60_000
    assert await client.exists("auth:rate_limit:route:orders:svc") == 1


async def test_check_route_bucket_is_per_client_and_route(
    scripts: ScriptRegistry, client: Redis
) -> None:
    await _store(client)

    codes = [(await _check(scripts, route=2, key="orders"))[0] for _ in range(3)]
    other_route = await _check(scripts, route=2, key="invoices")

    assert codes == [1, 1, -1]
    assert other_route[0] == 1


# -- lookup_tokens.lua (the token store's lookups) --------------------------------------------


async def test_token_lookups_return_each_record_in_order_or_none(valkey: RedisProcess) -> None:
    redis = Redis.from_url(valkey.url)  # bytes, as the service's auth client
    store = RedisTokenStore(redis, ScriptRegistry(redis))
    now = int(time.time())
    access = TokenRecord(
        digest="a1",
        client_id="svc",
        scopes=frozenset({"read"}),
        issued_at=now,
        expires_at=now + 900,
        jti="jti-1",
        subject="alice",
        audiences=("api",),
        session_id="s1",
        family_id="f1",
    )
    fields = encode_access_token(access)
    record = dict(zip(fields[::2], fields[1::2], strict=True))
    await redis.hset("auth:access_token:a1", mapping=record)
    await redis.hset("auth:access_token:b2", mapping=record)
    await redis.set("auth:blacklist:b2", "1")  # revoked, its record still there
    await redis.hset(
        "auth:refresh_token:r3",
        mapping={"c": "svc", "s": "read", "i": now, "e": now + 900, "f": "f1", "st": "rotated"},
    )
    try:
        wanted = [
            (TokenKind.REFRESH, "r3"),
            (TokenKind.ACCESS, "unknown"),
            (TokenKind.ACCESS, "b2"),
            (TokenKind.ACCESS, "a1"),
        ]
        refresh, unknown, revoked, live = await store.find_tokens(wanted)
    finally:
        await redis.aclose()

    assert (unknown, revoked) == (None, None)
    assert live == access
    assert refresh is not None
    assert (refresh.kind, refresh.rotated, refresh.family_id) == (TokenKind.REFRESH, True, "f1")
    assert (refresh.subject, refresh.audiences, refresh.scopes) == ("", (), frozenset({"read"}))
