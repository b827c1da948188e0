"""The whole service on a TLS-only redis-server with the least-privilege ACL users of
``deploy/redis/users.acl`` (issue 7, item 7): init and a full workload run without a
single ACL denial, and neither user can touch the other's keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from tests.harness.grpc_server import TEST_DEFAULTS, AppFactory, bootstrap_admin
from tests.harness.redis_servers import RedisProcess
from tests.harness.tls import TlsMaterial
from tests.integration.workload_support import full_workload
from tokenservice_server.config import load_settings
from tokenservice_server.jobs.init import run_init

ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"
USERS = {"auth": "tokenservice-auth", "cache": "tokenservice-cache"}


def _acl_rules(user: str, password: str) -> list[str]:
    """The shipped rules of ``user``, with a test password for the placeholder hash."""
    for line in ACL_FILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:2] == ["user", user]:
            return [f">{password}" if re.fullmatch(r"#[0-9a-f]{64}", w) else w for w in words[2:]]
    raise AssertionError(f"{ACL_FILE} defines no user {user}")


def _redis_settings(server: RedisProcess, material: TlsMaterial) -> dict[str, Any]:
    return {
        "url": server.url,
        "tls": {
            "ca_file": str(material.ca_cert),
            "cert_file": str(material.client_cert),
            "key_file": str(material.client_key),
        },
        "username": USERS["auth"],
        "password": "auth-password",
        "cache_username": USERS["cache"],
        "cache_password": "cache-password",
    }


async def test_service_on_tls_redis_with_separate_least_privilege_users(
    tls_redis: RedisProcess, tls_material: TlsMaterial, app_factory: AppFactory
) -> None:
    with tls_redis.client() as admin:
        for kind, user in USERS.items():
            admin.execute_command("ACL", "SETUSER", user, *_acl_rules(user, f"{kind}-password"))
        admin.execute_command("ACL", "LOG", "RESET")
    redis_settings = _redis_settings(tls_redis, tls_material)

    init_settings = load_settings(
        None,
        {
            "redis": redis_settings,
            "auth": {
                **TEST_DEFAULTS["auth"],
                "admin_client_secret": "acl-admin-secret-0123456789abcdef012345",
            },
        },
    )
    report = await run_init(init_settings, wait_timeout=5)
    assert report["auth_config"] == "created"
    assert report["cache_config"] == "created"

    app = await app_factory(redis=redis_settings)
    assert app.addresses is not None
    admin_client = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        await full_workload(channel, admin_client)

    with tls_redis.client() as admin:
        denials = admin.execute_command("ACL", "LOG")
        assert denials == [], denials  # the service never needed more than it was given
        assert admin.dbsize() > 0
        assert any(key.startswith("auth:") for key in admin.scan_iter(count=1000))

    # Each user is confined to its own keys, on any database.
    auth, cache = app.redis.auth, app.redis.cache
    assert await auth.acl_whoami() == USERS["auth"]
    assert await cache.acl_whoami() == USERS["cache"]
    for forbidden in (
        cache.get("auth:client:tokenservice-admin"),
        cache.hgetall("auth_config"),
        cache.set("auth:rate_limit:ip:1.2.3.4", "0"),
        auth.get("cache:recipes:soup"),
        auth.hset("cache_config", "recipes:max_entries", "1"),
        auth.flushdb(),
        cache.config_get("maxmemory"),
    ):
        with pytest.raises(NoPermissionError):
            await forbidden
    await _no_key_listing(auth)


async def _no_key_listing(client: Redis) -> None:
    with pytest.raises(NoPermissionError):
        await client.keys("*")  # KEYS is @dangerous: a whole-keyspace scan blocks Redis
