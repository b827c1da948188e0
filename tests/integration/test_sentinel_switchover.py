"""A graceful ``SENTINEL FAILOVER`` leaves the old master alive, and a master that is
alive never breaks a connection: without asking Sentinel the service would go on reading
and writing there until Sentinel converts it (~10 s later, its next INFO), and those writes
are then discarded. The health probe (``RedisConnections.ping``) asks Sentinel and moves
both pools to the new master (storage/sentinel.py ``follow_master``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.harness.redis_servers import SentinelTopology, wait_until
from tokenservice_server.config import RedisSettings
from tokenservice_server.storage.connection import open_redis


class _QuietLog:
    def info(self, *args: Any, **kwargs: Any) -> None: ...

    def warning(self, *args: Any, **kwargs: Any) -> None: ...


async def test_the_probe_moves_writes_off_a_replaced_but_living_master(
    sentinel_topology_factory: Callable[..., SentinelTopology],
) -> None:
    topology = sentinel_topology_factory()
    settings = RedisSettings(
        sentinels=topology.sentinel_addresses, master_name=topology.master_name
    )
    async with open_redis(settings, log=_QuietLog()) as redis:
        assert await redis.ping()
        await redis.auth.set("auth:before", "1")
        await redis.cache.set("cache:before", "1")
        old = topology.master_node()

        with topology.sentinel_client(topology.sentinels[0]) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", topology.master_name)
        new = await asyncio.to_thread(topology.wait_for_new_master, old.address)

        def switched() -> bool:
            # SENTINEL MASTERS (what clients read) names the new master only at the end
            # of the failover; GET-MASTER-ADDR-BY-NAME already names it a little earlier.
            for process in topology.sentinels:
                with topology.sentinel_client(process) as sentinel:
                    state = sentinel.sentinel_masters()[topology.master_name]
                if (state["ip"], int(state["port"])) != new:
                    return False
            return True

        await asyncio.to_thread(wait_until, switched, timeout=15, what="the switch-master")
        with topology.node_client(old) as client:
            # The window this is about: the old master still takes writes.
            assert client.info("replication")["role"] == "master"

        assert await redis.ping()  # the health probe: asks Sentinel, follows the master
        await redis.auth.set("auth:after", "1")
        await redis.cache.set("cache:after", "1")

        def demoted() -> bool:
            with topology.node_client(old) as client:
                info = client.info("replication")
            return bool(info["role"] == "slave" and info.get("master_link_status") == "up")

        await asyncio.to_thread(wait_until, demoted, timeout=30, what="the old master to follow")
        with topology.node_client(topology.master_node()) as master:
            assert topology.master_node().address == new
            assert master.get("auth:after") == "1"  # written to the new master: kept
            master.select(settings.cache_db)
            assert master.get("cache:after") == "1"
