"""``durability: replicated`` against a real replica (issue 10 item 1): a state change is
acknowledged only once a replica confirmed it. With the only replica paused (SIGSTOP) or
stopped, IssueToken fails with UNAVAILABLE and a retry hint instead of acknowledging a
write a failover could lose; it succeeds again once the replica is back. The same master
with the default ``async`` durability keeps acknowledging, which shows it is the WAIT that
refuses."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, Credentials, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess, wait_until
from tests.reliability.support import retry_delay
from tokenservice.client import error_info
from tokenservice_server.app import Application

ACK_TIMEOUT_MS = 300


async def _issue_error(channel: grpc.aio.Channel, admin: Credentials) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await issue_token(channel, admin)
    return caught.value


def _assert_unconfirmed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() is grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    info = error_info(error)
    assert info is not None
    assert info.reason == "BACKEND_UNAVAILABLE"
    assert "not confirmed by a replica" in (error.details() or "")
    delay = retry_delay(error)
    assert delay is not None
    assert delay > 0


def _linked(master: RedisProcess, replica: RedisProcess, up: bool) -> Callable[[], bool]:
    """The replica has loaded the master's data and streams from it (or, ``up=False``,
    the master no longer counts it)."""

    def check() -> bool:
        with master.client() as client:
            connected = int(client.info("replication")["connected_slaves"])
        if not up:
            return connected == 0
        with replica.client() as client:
            link = client.info("replication").get("master_link_status")
        return connected == 1 and link == "up"

    return check


async def _start(app_factory: AppFactory, master: RedisProcess, durability: str) -> Application:
    return await app_factory(
        redis={
            "url": master.url,
            "durability": durability,
            "replica_ack_timeout_ms": ACK_TIMEOUT_MS,
        }
    )


async def test_a_write_no_replica_confirms_fails_with_unavailable_and_a_retry_hint(
    redis_server_factory: Callable[..., RedisProcess], app_factory: AppFactory
) -> None:
    master = redis_server_factory(name="master", extra_config=["repl-diskless-sync-delay 0"])
    replica = redis_server_factory(
        name="replica", extra_config=[f"replicaof {master.host} {master.port}"]
    )
    wait_until(_linked(master, replica, True), timeout=10, what="the replica to sync")
    durable = await _start(app_factory, master, "replicated")
    relaxed = await _start(app_factory, master, "async")
    admin = await bootstrap_admin(durable)
    assert durable.addresses is not None
    assert relaxed.addresses is not None
    async with (
        grpc.aio.insecure_channel(durable.addresses.grpc_target) as channel,
        grpc.aio.insecure_channel(relaxed.addresses.grpc_target) as relaxed_channel,
    ):
        assert await issue_token(channel, admin)  # the replica confirms

        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)  # connected, but never acknowledges
        try:
            _assert_unconfirmed(await _issue_error(channel, admin))
            assert await issue_token(relaxed_channel, admin)  # async: acknowledged anyway
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        assert await issue_token(channel, admin)

        replica.stop()  # gone altogether
        wait_until(_linked(master, replica, False), timeout=10, what="the replica to go")
        _assert_unconfirmed(await _issue_error(channel, admin))

        replica.start()
        wait_until(_linked(master, replica, True), timeout=10, what="the replica to return")
        assert await issue_token(channel, admin)
