"""Token records under ``auth:access_token:{sha256}`` with their indexes.

Field names are short on purpose: every live token costs memory for as long as it lives
(the budget is 400 bytes per access token including its index entries).
"""

from __future__ import annotations

from redis.asyncio import Redis

from tokenservice_server.domain.tokens import AccessTokenRecord
from tokenservice_server.storage import keys
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = ["RedisTokenStore", "decode_access_token", "encode_access_token"]


def encode_access_token(record: AccessTokenRecord) -> list[str]:
    fields = {
        "c": record.client_id,
        "s": " ".join(sorted(record.scopes)),
        "i": str(record.issued_at),
        "e": str(record.expires_at),
        "j": record.jti,
        "u": record.subject,
        "a": " ".join(record.audiences),
        "n": record.session_id,
        "f": record.family_id,
    }
    return [item for name, value in fields.items() if value for item in (name, value)]


def decode_access_token(digest: str, raw: dict[bytes, bytes]) -> AccessTokenRecord:
    data = {key.decode(): value.decode() for key, value in raw.items()}
    return AccessTokenRecord(
        digest=digest,
        client_id=data["c"],
        scopes=frozenset(data.get("s", "").split()),
        issued_at=int(data["i"]),
        expires_at=int(data["e"]),
        jti=data.get("j", ""),
        subject=data.get("u", ""),
        audiences=tuple(data.get("a", "").split()),
        session_id=data.get("n", ""),
        family_id=data.get("f", ""),
    )


class RedisTokenStore:
    def __init__(self, redis: Redis, scripts: ScriptRegistry) -> None:
        self._redis = redis
        self._scripts = scripts

    async def issue_access_token(
        self, record: AccessTokenRecord, *, client_generation: int, ttl: int
    ) -> bool:
        member = keys.access_token_member(record.digest)
        issued = await self._scripts.call(
            "issue_access_token",
            keys=[
                keys.client_key(record.client_id),
                keys.access_token_key(record.digest),
                keys.client_tokens_key(record.client_id),
                keys.TOKEN_CLEANUP,
                keys.AUTH_STATS,
            ],
            args=[client_generation, ttl, record.expires_at, member, *encode_access_token(record)],
        )
        return bool(issued)

    async def find_access_token(self, digest: str) -> AccessTokenRecord | None:
        # Revocation deletes the record and leaves a blacklist marker; checking both in
        # one pipelined round trip keeps a token revoked even if a stale replica or a
        # restored backup still held its record.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.access_token_key(digest))
            pipe.exists(keys.blacklist_key(digest))
            raw, blacklisted = await pipe.execute()
        if not raw or blacklisted:
            return None
        return decode_access_token(digest, raw)
