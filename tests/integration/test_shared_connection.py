"""The shared, pipelined connection (storage/shared_connection.py) against a real Valkey.

Many callers in flight on one connection must each get their own reply, whatever happens
to the others: an error reply, a caller that gives up, the connection killed, Redis
stalled. Commands that hold connection state stay on pooled connections.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvloop
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from tests.harness.redis_servers import RedisProcess
from tests.harness.tls import TlsMaterial
from tokenservice_server.config import RedisSettings, TlsClientSettings
from tokenservice_server.storage import RedisConnections, open_redis
from tokenservice_server.storage.lean import LeanConnection, LeanPoolMixin
from tokenservice_server.storage.retry import default_retry
from tokenservice_server.storage.shared_connection import SharedConnection

#: A script that echoes its argument, and one that keeps Redis busy for ARGV[1] units of
#: 200,000 loop steps (a counting loop: Redis freezes TIME while a script runs). A unit is
#: 1-3 ms by machine (2.8 on a slow one), so callers here stay at 100 units or fewer:
#: longer than the 50 ms a caller gives up after, shorter than the 0.5 s socket timeout.
ECHO = "return ARGV[1]"
BUSY = """
local x = 0
for i = 1, tonumber(ARGV[1]) * 200000 do x = x + i end
return ARGV[2]
"""


@pytest.fixture
async def redis(valkey: RedisProcess) -> AsyncIterator[RedisConnections]:
    settings = RedisSettings(url=valkey.url, socket_timeout=0.5)
    async with open_redis(settings) as connections:
        yield connections


def shared_of(redis: RedisConnections) -> SharedConnection:
    pool = redis.auth.connection_pool
    assert isinstance(pool, LeanPoolMixin)
    assert pool.shared is not None
    return pool.shared


def client_count(valkey: RedisProcess) -> int:
    """Connections Valkey has on the auth DB (0), this test's own excluded."""
    with valkey.client() as admin:
        clients = admin.client_list()
        me = admin.client_id()
    return sum(1 for c in clients if int(c["db"]) == 0 and int(c["id"]) != me)


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    redis: RedisConnections, valkey: RedisProcess
) -> None:
    echo = await redis.auth.script_load(ECHO)
    await redis.auth.hset("h", mapping={"a": "1"})
    results = await asyncio.gather(
        *(redis.auth.evalsha(echo, 0, f"caller-{n}") for n in range(200)),
        *(redis.auth.hgetall("h") for _ in range(50)),
        *(redis.auth.exists("h", "missing") for _ in range(50)),
    )
    assert results[:200] == [f"caller-{n}".encode() for n in range(200)]
    assert results[200:250] == [{b"a": b"1"}] * 50  # the response callbacks still apply
    assert results[250:] == [1] * 50
    assert shared_of(redis).connected
    # The shared connection, plus the one pooled connection SCRIPT LOAD/HSET took.
    assert client_count(valkey) == 2


async def test_a_pipeline_of_reads_goes_on_the_shared_connection(
    redis: RedisConnections,
) -> None:
    await redis.auth.hset("h", mapping={"a": "1"})
    async with redis.auth.pipeline(transaction=False) as pipe:
        pipe.hgetall("h").exists("h").hgetall("missing").exists("missing")
        assert await pipe.execute() == [{b"a": b"1"}, 1, {}, 0]
    assert shared_of(redis).connected
    # A transaction keeps its own connection (MULTI/EXEC state).
    async with redis.auth.pipeline(transaction=True) as pipe:
        pipe.hincrby("h", "n", 1).hgetall("h")
        assert await pipe.execute() == [1, {b"a": b"1", b"n": b"1"}]


async def test_an_error_reply_reaches_only_its_caller(redis: RedisConnections) -> None:
    echo = await redis.auth.script_load(ECHO)
    results = await asyncio.gather(
        redis.auth.evalsha(echo, 0, "before"),
        redis.auth.evalsha("0" * 40, 0),
        redis.auth.evalsha(echo, 0, "after"),
        return_exceptions=True,
    )
    assert results[0] == b"before"
    assert results[2] == b"after"
    assert isinstance(results[1], NoScriptError)
    async with redis.auth.pipeline(transaction=False) as pipe:
        pipe.evalsha(echo, 0, "one").evalsha("0" * 40, 0).evalsha(echo, 0, "three")
        replies = await pipe.execute(raise_on_error=False)
    assert replies[0] == b"one"
    assert replies[2] == b"three"
    assert isinstance(replies[1], ResponseError)


async def test_a_caller_that_gives_up_leaves_the_connection_in_step(
    redis: RedisConnections,
) -> None:
    busy = await redis.auth.script_load(BUSY)
    echo = await redis.auth.script_load(ECHO)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(redis.auth.evalsha(busy, 0, 100, "late"), 0.05)
    connection = shared_of(redis)._replies
    # Its reply arrives later and is dropped: the next callers get their own.
    assert await redis.auth.evalsha(echo, 0, "next") == b"next"
    assert await asyncio.gather(*(redis.auth.evalsha(echo, 0, n) for n in range(20))) == [
        str(n).encode() for n in range(20)
    ]
    assert shared_of(redis)._replies is connection  # the same connection throughout


async def test_a_lost_connection_fails_its_callers_over_to_a_new_one(
    redis: RedisConnections,
) -> None:
    echo = await redis.auth.script_load(ECHO)
    assert await redis.auth.evalsha(echo, 0, "warm") == b"warm"
    first = shared_of(redis)._replies
    assert first is not None
    calls = [asyncio.ensure_future(redis.auth.evalsha(echo, 0, n)) for n in range(30)]
    await asyncio.sleep(0)  # every call has written its command; no reply is read yet
    assert len(first.waiting) == 30
    first.transport.abort()  # what a reset by the peer does
    # Each caller's retry policy sends it again, all on one new connection.
    assert await asyncio.gather(*calls) == [str(n).encode() for n in range(30)]
    second = shared_of(redis)._replies
    assert second is not None
    assert second is not first
    assert second.open
    assert not first.open


async def test_a_stalled_redis_is_found_by_the_socket_timeout_and_ridden_out(
    redis: RedisConnections, valkey: RedisProcess
) -> None:
    echo = await redis.auth.script_load(ECHO)
    assert await redis.auth.evalsha(echo, 0, "warm") == b"warm"
    first = shared_of(redis)._replies
    assert first is not None
    assert valkey.pid is not None
    os.kill(valkey.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        call = asyncio.ensure_future(redis.auth.evalsha(echo, 0, "stalled"))
        while first.open:
            await asyncio.sleep(0.01)
            assert time.monotonic() - started < 5, "the stall was never detected"
        found_after = time.monotonic() - started
    finally:
        os.kill(valkey.pid, signal.SIGCONT)
    # One to two socket timeouts (0.5 s): never before the first has passed.
    assert 0.5 <= found_after < 1.5
    assert await call == b"stalled"  # retried on a new connection once Redis answers
    assert shared_of(redis)._replies is not first


async def test_a_new_master_retires_the_connection_after_its_replies(
    redis: RedisConnections,
) -> None:
    busy = await redis.auth.script_load(BUSY)
    echo = await redis.auth.script_load(ECHO)
    assert await redis.auth.evalsha(echo, 0, "warm") == b"warm"
    first = shared_of(redis)._replies
    in_flight = asyncio.ensure_future(redis.auth.evalsha(busy, 0, 100, "finished"))
    await asyncio.sleep(0.02)
    # What a Sentinel pool does when the master moves, and what a reset does.
    await redis.auth.connection_pool.disconnect(inuse_connections=False)
    assert await redis.auth.evalsha(echo, 0, "new") == b"new"
    assert shared_of(redis)._replies is not first
    assert await in_flight == b"finished"  # the retired connection delivered it
    assert first is not None
    assert not first.open


async def test_switched_off_every_command_takes_a_pooled_connection(
    valkey: RedisProcess,
) -> None:
    async with open_redis(RedisSettings(url=valkey.url, shared_connection=False)) as redis:
        pool = redis.auth.connection_pool
        assert isinstance(pool, LeanPoolMixin)
        assert pool.shared is None
        echo = await redis.auth.script_load(ECHO)
        results = await asyncio.gather(*(redis.auth.evalsha(echo, 0, n) for n in range(20)))
        assert results == [str(n).encode() for n in range(20)]


async def test_resp3_push_messages_are_never_taken_for_replies(valkey: RedisProcess) -> None:
    """redis-py 8 speaks RESP3 by default: a push the server sends between replies (here a
    client-tracking invalidation, switched on by hand on the shared connection) must be
    dropped, or every caller after it would get the previous caller's reply."""
    async with open_redis(RedisSettings(url=f"{valkey.url}?protocol=3")) as redis:
        shared = shared_of(redis)
        assert await shared.execute(("CLIENT", "TRACKING", "ON")) in (b"OK", "OK")
        await redis.auth.set("tracked", "v0")
        assert await shared.call(("GET", "tracked")) == b"v0"  # now tracked
        with valkey.client() as other:
            other.set("tracked", "v1")  # the server pushes an invalidation to the shared one
        for _ in range(3):
            values = await asyncio.gather(*(shared.call(("GET", "tracked")) for _ in range(10)))
            assert values == [b"v1"] * 10
            with valkey.client() as other:
                other.set("tracked", "v1")
        echo = await redis.auth.script_load(ECHO)
        results = await asyncio.gather(*(redis.auth.evalsha(echo, 0, n) for n in range(50)))
        assert results == [str(n).encode() for n in range(50)]


async def test_readonly_from_a_demoted_master_retires_the_connection(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    """On a Sentinel master pool, READONLY means the node was demoted: the command fails
    with a ConnectionError (retried by the policy on a new connection, to the master
    Sentinel names) and nothing more is sent on this one."""
    master = redis_server_factory()
    replica = redis_server_factory(extra_config=[f"replicaof {master.host} {master.port}"])
    shared = SharedConnection(
        lambda: LeanConnection(host=replica.host, port=replica.port),
        retry=default_retry(),
        socket_timeout=1.0,
        follows_master=True,
    )
    try:
        assert await shared.execute(("GET", "k")) is None  # reads are fine on a replica
        first = shared._replies
        with pytest.raises(ConnectionError, match="now a slave"):
            await shared.execute(("EVAL", "return redis.call('SET', 'k', 'v')", 0))
        assert first is not None
        assert first.retired
        assert not first.open  # nothing else was in flight: closed at once
        assert await shared.execute(("GET", "k")) is None  # a new connection
        assert shared._replies is not first
    finally:
        shared.close()


async def test_a_failover_reply_is_retried_on_the_new_master(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    """READONLY from a demoted master, for a single command and inside a batch, is retried
    by the policy on a new connection: here the second one goes to the master, as a
    Sentinel pool's would once Sentinel names it."""
    master = redis_server_factory()
    replica = redis_server_factory(extra_config=[f"replicaof {master.host} {master.port}"])
    made: list[RedisProcess] = []

    def make() -> LeanConnection:
        node = replica if len(made) % 2 == 0 else master  # replica first, then the master
        made.append(node)
        return LeanConnection(host=node.host, port=node.port)

    shared = SharedConnection(make, retry=default_retry(), socket_timeout=1.0, follows_master=True)
    write = ("EVAL", "return redis.call('INCR', KEYS[1])", 1, "counter")
    try:
        assert await shared.call(write) == 1
        assert made == [replica, master]
        assert await shared.call_many([("GET", "counter"), write]) == [b"1", 2]  # on the master
        shared.retire()  # the next connection is the replica again: READONLY in a batch
        assert await shared.call_many([("GET", "counter"), write]) == [b"2", 3]
        assert made == [replica, master, replica, master]
    finally:
        shared.close()


async def _share_under_uvloop(settings: RedisSettings) -> list[Any]:
    """50 concurrent callers on the shared connection, on uvloop (what ``serve`` runs),
    in a thread of its own: its transports (TCP, TLS, unix) are uvloop's, not asyncio's."""

    async def callers() -> list[Any]:
        async with open_redis(settings) as redis:
            echo = await redis.auth.script_load(ECHO)
            results = await asyncio.gather(*(redis.auth.evalsha(echo, 0, n) for n in range(50)))
            assert shared_of(redis).connected
            return list(results)

    return await asyncio.to_thread(uvloop.run, callers())


async def test_uvloop_transports_over_tcp_and_unix(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_server_factory(unix_socket=True)
    expected = [str(n).encode() for n in range(50)]
    assert await _share_under_uvloop(RedisSettings(url=server.url)) == expected
    assert await _share_under_uvloop(RedisSettings(url=server.unix_url)) == expected


async def test_uvloop_transport_over_tls(
    tls_redis: RedisProcess, tls_material: TlsMaterial
) -> None:
    tls = TlsClientSettings(
        ca_file=tls_material.ca_cert,
        cert_file=tls_material.client_cert,
        key_file=tls_material.client_key,
    )
    results = await _share_under_uvloop(RedisSettings(url=tls_redis.url, tls=tls))
    assert results == [str(n).encode() for n in range(50)]
