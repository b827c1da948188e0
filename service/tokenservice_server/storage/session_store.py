"""User sessions under ``auth:session:{session_id}`` (sliding TTL)."""

from __future__ import annotations

import json
from typing import cast

from redis.asyncio import Redis
from redis.typing import EncodableT

from tokenservice_server.domain.audit import AuditInStep
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.domain.tokens import Session
from tokenservice_server.storage import keys
from tokenservice_server.storage.audit_store import audit_in_step_args
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = ["RedisSessionStore"]


def _decode(session_id: str, raw: dict[bytes, bytes] | list[bytes]) -> Session:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    data = {key.decode(): value.decode() for key, value in raw.items()}
    return Session(
        session_id=session_id,
        subject=data["u"],
        client_id=data.get("c", ""),
        create_time=int(data["ct"]) / 1000,
        expire_time=int(data["et"]) / 1000,
        attributes=json.loads(data.get("at", "{}")),
    )


class RedisSessionStore:
    def __init__(
        self, redis: Redis, scripts: ScriptRegistry, *, audit_max_entries: int = 10_000
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._audit_max_entries = audit_max_entries  # auth_audit bound (revoke_index)
        self.token_cache: TokenCache | None = None  # dropped from at once on revocation

    async def create(self, session: Session, ttl: int) -> None:
        fields: list[EncodableT] = [
            "u",
            session.subject,
            "c",
            session.client_id,
            "ct",
            str(round(session.create_time * 1000)),
            "et",
            str(round(session.expire_time * 1000)),
            "at",
            json.dumps(session.attributes, separators=(",", ":"), sort_keys=True),
        ]
        # One script: the hash never exists without its TTL, in one round trip, and
        # durability 'replicated' waits for a replica as for every other state change.
        await self._scripts.call(
            "create_session",
            keys=[keys.session_key(session.session_id), keys.SESSION_CLEANUP],
            args=[session.session_id, ttl, int(session.expire_time), *fields],
        )

    async def get(self, session_id: str) -> Session | None:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(keys.session_key(session_id)))
        return _decode(session_id, raw) if raw else None

    async def extend(self, session_id: str, ttl: int, expire_time: float) -> Session | None:
        raw = await self._scripts.call(
            "extend_session",
            keys=[
                keys.session_key(session_id),
                keys.SESSION_CLEANUP,
                keys.session_tokens_key(session_id),
            ],
            args=[session_id, ttl, round(expire_time * 1000)],
        )
        return _decode(session_id, raw) if raw else None

    async def end(self, session_id: str, audit: AuditInStep | None = None) -> int | None:
        """Delete the session and revoke its tokens, writing ``audit`` in the same step;
        None if it did not exist."""
        revoked = int(
            await self._scripts.call(
                "revoke_index",
                keys=[
                    keys.session_tokens_key(session_id),
                    keys.session_key(session_id),
                    keys.SESSION_CLEANUP,
                    keys.AUDIT_STREAM,
                ],
                args=[
                    keys.AUTH_ROOT,
                    session_id,
                    *audit_in_step_args(audit, self._audit_max_entries),
                ],
            )
        )
        if audit is not None:
            audit.written = True
        if self.token_cache is not None:
            self.token_cache.invalidate([f"n:{session_id}"])
        return None if revoked < 0 else revoked
