"""Authorization codes and refresh-token rotation: the atomic grant steps (one script each)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from tokenservice_server.domain.rate_limiting import TokenRequestLimits
from tokenservice_server.domain.token_cache import TokenCache, family_key
from tokenservice_server.domain.tokens import AuthorizationCode, GrantResult
from tokenservice_server.storage import keys
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.storage.token_limits import limited, token_limit_args, token_limit_keys

__all__ = ["RedisGrantStore"]


def _result(reply: list[Any]) -> GrantResult:
    values = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    if values[0] == "limited":
        refusal = limited(values[1], values[2])
        return GrantResult(
            "limited", retry_after=refusal.retry_after, limited_by=refusal.limited_by
        )
    status, scope, subject, session, family = (values + [""] * 5)[:5]
    return GrantResult(status, scope, subject, session, family)


class RedisGrantStore:
    def __init__(self, redis: Redis, scripts: ScriptRegistry) -> None:
        self._redis = redis
        self._scripts = scripts
        # This replica's hot-token cache: a family a grant step revoked (a reuse, an
        # ended session, a retried rotation's retired pair) is dropped from it at once,
        # without waiting for the pub/sub echo the script published for every replica.
        self.token_cache: TokenCache | None = None

    def _forget_family(self, result: GrantResult, *, revoked: bool) -> GrantResult:
        if revoked and result.family_id and self.token_cache is not None:
            self.token_cache.invalidate([family_key(result.family_id)])
        return result

    async def store_code(
        self, digest: str, code: AuthorizationCode, *, client_generation: int, ttl: int
    ) -> int:
        """1 stored, 0 stale client, -1 the session is gone, -2 another subject's session."""
        fields = {
            "c": code.client_id,
            "r": code.redirect_uri,
            "s": " ".join(sorted(code.scopes)),
            "u": code.subject,
            "f": code.family_id,
            "n": code.session_id,
            "ch": code.challenge,
            "cm": code.challenge_method,
            "st": "issued",
        }
        flat = [item for name, value in fields.items() if value for item in (name, value)]
        return int(
            await self._scripts.call(
                "store_code",
                keys=[
                    keys.client_key(code.client_id),
                    keys.code_key(digest),
                    keys.session_key(code.session_id),
                    keys.AUTH_STATS,
                ],
                args=[client_generation, ttl, code.session_id, code.subject, *flat],
            )
        )

    async def redeem_code(
        self,
        digest: str,
        *,
        client_id: str,
        client_generation: int,
        redirect_uri: str,
        verifier_s256: str,
        verifier: str,
        now: int,
        access: tuple[str, str, int],
        refresh: tuple[str, str, int] | None,
        audiences: tuple[str, ...],
        limits: TokenRequestLimits,
    ) -> GrantResult:
        """``access``/``refresh`` are (sha256, jti, ttl) of the tokens to issue."""
        refresh_digest, refresh_jti, refresh_ttl = refresh or ("", "", 0)
        reply = await self._scripts.call(
            "redeem_code",
            keys=[keys.client_key(client_id), keys.code_key(digest), *token_limit_keys(limits)],
            args=[
                client_generation,
                client_id,
                redirect_uri,
                verifier_s256,
                verifier,
                now,
                access[2],
                refresh_ttl,
                access[0],
                refresh_digest,
                access[1],
                refresh_jti,
                " ".join(audiences),
                keys.AUTH_ROOT,
                *token_limit_args(limits),
            ],
        )
        result = _result(reply)
        return self._forget_family(result, revoked=result.status == "reused")

    async def rotate_refresh(
        self,
        digest: str,
        *,
        client_id: str,
        client_generation: int,
        scope: str,
        now_ms: int,
        grace_ms: int,
        access: tuple[str, str, int],
        refresh: tuple[str, str, int],
        audiences: tuple[str, ...],
        limits: TokenRequestLimits,
    ) -> GrantResult:
        reply = await self._scripts.call(
            "rotate_refresh",
            keys=[
                keys.client_key(client_id),
                keys.refresh_token_key(digest),
                *token_limit_keys(limits),
            ],
            args=[
                client_generation,
                client_id,
                scope,
                now_ms,
                grace_ms,
                access[2],
                refresh[2],
                access[0],
                refresh[0],
                access[1],
                refresh[1],
                " ".join(audiences),
                keys.AUTH_ROOT,
                *token_limit_args(limits),
            ],
        )
        # Any rotation may have revoked part of the family (a reuse, an ended session, or
        # a grace retry retiring the unreceived pair): the family's cached access tokens
        # are dropped either way (at worst a cache miss).
        result = _result(reply)
        return self._forget_family(result, revoked=result.status != "limited")
