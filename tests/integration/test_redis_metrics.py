"""The Redis client metrics: command latency and errors by logical DB and command, pool
usage, token issuance by grant and result, and Sentinel failovers as the service saw
them."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, Credentials, bootstrap_admin, issue_token
from tests.harness.redis_servers import SentinelTopology
from tokenservice_server.app import Application


def _scrape(app: Application) -> str:
    assert app.addresses is not None
    url = f"http://{app.addresses.metrics_host}:{app.addresses.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{series} not exported"
    return float(match.group(1))


async def test_issuance_and_redis_commands_are_measured(
    server: Application, channel: grpc.aio.Channel, admin_credentials: Credentials
) -> None:
    await issue_token(channel, admin_credentials)
    with pytest.raises(grpc.aio.AioRpcError):
        await issue_token(channel, Credentials(admin_credentials.client_id, "wrong-secret"))
    text = await asyncio.to_thread(_scrape, server)

    issued = 'tokenservice_tokens_issued_total{grant="client_credentials",result="%s"}'
    assert _value(text, issued % "issued") == 1
    assert _value(text, issued % "invalid_client") == 1
    # Issuance is one EVALSHA on the auth DB; the health probe PINGs both DBs.
    evalsha = 'tokenservice_redis_command_duration_seconds_count{command="EVALSHA",db="auth"}'
    assert _value(text, evalsha) >= 2
    assert (
        _value(text, 'tokenservice_redis_command_duration_seconds_count{command="PING",db="cache"}')
        >= 1
    )
    for db in ("auth", "cache"):
        assert _value(text, f'tokenservice_redis_pool_max_connections{{db="{db}"}}') == 128
        assert _value(text, f'tokenservice_redis_pool_connections{{db="{db}",state="in_use"}}') >= 0
        assert _value(text, f'tokenservice_redis_pool_connections{{db="{db}",state="idle"}}') >= 1
        # Exported at 0 from the start, so rate() and alerts see the series.
        errors = f'tokenservice_redis_command_errors_total{{db="{db}",error="connection"}}'
        assert _value(text, errors) == 0
    assert _value(text, "tokenservice_redis_failovers_total") == 0


async def test_a_sentinel_failover_is_counted_once(
    sentinel_topology: SentinelTopology, app_factory: AppFactory
) -> None:
    app = await app_factory(
        redis={"sentinels": sentinel_topology.sentinel_addresses, "master_name": "tokenservice"}
    )
    admin = await bootstrap_admin(app)
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        await issue_token(channel, admin)
        old = sentinel_topology.current_master()
        sentinel_topology.kill_master()
        await asyncio.to_thread(sentinel_topology.wait_for_new_master, old)
        await issue_token(channel, admin)  # rides through on the new master
        await issue_token(channel, admin)
    text = await asyncio.to_thread(_scrape, app)
    assert _value(text, "tokenservice_redis_failovers_total") == 1
