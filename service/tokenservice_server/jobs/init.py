"""``tokenservice init``: prepare Redis for the service (the Kubernetes init Job).

Idempotent: running it twice changes nothing the second time. It waits for Redis within
a bounded time (logging progress), then creates or converges the bootstrap admin client
to the configured secret.
"""

from __future__ import annotations

import asyncio
import time

from tokenservice_server.config import ConfigError, Settings
from tokenservice_server.domain.bootstrap import admin_client_spec
from tokenservice_server.logging import get_logger
from tokenservice_server.storage.connection import RedisConnections, open_redis
from tokenservice_server.wiring import build_components

__all__ = ["admin_secret", "run_init", "wait_for_redis"]

_log = get_logger("tokenservice.init")
_MIN_SECRET = 32


def admin_secret(settings: Settings) -> str:
    auth = settings.auth
    if auth.admin_client_secret is not None:
        secret = auth.admin_client_secret.get_secret_value()
        source = "auth.admin_client_secret (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET)"
    elif auth.admin_client_secret_file is not None:
        source = "auth.admin_client_secret_file (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET_FILE)"
        try:
            secret = auth.admin_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"invalid setting {source}: {exc}") from None
    else:
        raise ConfigError(
            "invalid setting auth.admin_client_secret (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET)"
            ": init needs the admin secret, or auth.admin_client_secret_file"
        )
    if len(secret) < _MIN_SECRET:
        raise ConfigError(f"invalid setting {source}: at least {_MIN_SECRET} characters")
    return secret


async def wait_for_redis(redis: RedisConnections, within: float) -> None:
    started = time.monotonic()
    attempt = 0
    while not await redis.ping():
        attempt += 1
        waited = time.monotonic() - started
        if waited >= within:
            raise TimeoutError(f"Redis did not answer within {within:.0f} s ({redis.target})")
        _log.info("waiting_for_redis", target=redis.target, attempt=attempt, waited_s=round(waited))
        await asyncio.sleep(min(2.0, 0.2 * 2**attempt))


async def run_init(settings: Settings, *, wait_timeout: float) -> dict[str, str]:
    """Returns what changed, e.g. {"admin_client": "created"}."""
    secret = admin_secret(settings)
    async with open_redis(settings.redis, log=_log) as redis:
        await wait_for_redis(redis, wait_timeout)
        components = build_components(settings, redis)
        outcome = await components.registry.bootstrap(
            settings.auth.admin_client_id, admin_client_spec(), secret
        )
    _log.info("admin_client", client_id=settings.auth.admin_client_id, outcome=outcome)
    return {"admin_client": outcome}
