"""Rate-limit buckets (GCRA, ``lua/_gcra.lua``) and the one-round-trip Check lookup.

Bucket keys are ``auth:rate_limit:{scope}:{id}``: ``ip``, ``client`` and ``route`` for
Envoy's Check, ``issue_ip`` and ``issue_client`` for the token endpoint, so a service's
token requests never spend its traffic's budget or the other way round.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from tokenservice_server.domain.rate_limiting import ADMITTED, Admission, RateLimitPolicy
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.domain.tokens import TokenRecord
from tokenservice_server.storage import keys
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.storage.token_store import decode_fields

__all__ = ["RedisAccessCheckStore", "RedisRateLimitStore", "RedisStatsStore"]

_ISSUE_BUCKETS = ("issue_client", "issue_ip")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refused(wait_us: Any, limited_by: str) -> Admission:
    return Admission(allowed=False, retry_after=int(wait_us) / 1_000_000, limited_by=limited_by)


class RedisRateLimitStore:
    def __init__(self, scripts: ScriptRegistry) -> None:
        self._scripts = scripts

    async def admit_token_request(
        self, client_id: str, client_ip: str, policy: RateLimitPolicy
    ) -> Admission:
        allowed, wait_us, index = await self._scripts.call(
            "rate_limit",
            keys=[
                keys.client_key(client_id),
                keys.rate_limit_key("issue_client", client_id),
                keys.rate_limit_key("issue_ip", client_ip),
            ],
            args=[
                policy.period_ms,
                policy.token_per_client if client_id else 0,
                policy.token_per_ip if client_ip else 0,
            ],
        )
        if int(allowed):
            return ADMITTED
        return _refused(wait_us, _ISSUE_BUCKETS[int(index) - 2])


class RedisAccessCheckStore:
    def __init__(self, scripts: ScriptRegistry, token_cache: TokenCache | None = None) -> None:
        self._scripts = scripts
        self._token_cache = token_cache  # filled with each live token, and its client's limit

    async def resolve_and_admit(
        self, digest: str, *, client_ip: str, route_key: str, policy: RateLimitPolicy
    ) -> tuple[TokenRecord | None, Admission]:
        cache = self._token_cache
        epoch = cache.epoch if cache is not None else 0
        reply: list[Any] = await self._scripts.call(
            "check_access_token",
            keys=[
                keys.access_token_key(digest),
                keys.blacklist_key(digest),
                keys.rate_limit_key("ip", client_ip),
            ],
            args=[
                policy.period_ms,
                policy.per_ip if client_ip else 0,
                policy.per_client,
                policy.per_route,
                route_key,
                keys.AUTH_ROOT,
            ],
        )
        verdict = int(reply[0])
        if verdict < 0:
            return None, _refused(reply[1], _text(reply[2]))
        if verdict == 0:
            return None, ADMITTED
        record = decode_fields(digest, reply[3:12])
        if cache is not None:
            cache.put(record, float(reply[12] or 0), epoch)
        return record, ADMITTED


class RedisStatsStore:
    """The ``auth_stats`` counters, incremented in one pipelined round trip."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def increment(self, counts: dict[str, int]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, amount in sorted(counts.items()):
                pipe.hincrby(keys.AUTH_STATS, name, amount)
            await pipe.execute()
