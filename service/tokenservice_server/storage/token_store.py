"""Token records under ``auth:access_token:{sha256}`` / ``auth:refresh_token:{sha256}``.

Field names are short on purpose: every live token costs memory for as long as it lives
(the budget is 400 bytes per access token including its index entries).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from tokenservice_server.domain.audit import AuditInStep
from tokenservice_server.domain.rate_limiting import Admission, TokenRequestLimits
from tokenservice_server.domain.token_cache import TokenCache, family_key, token_key
from tokenservice_server.domain.tokens import TokenKind, TokenRecord, derived_jti
from tokenservice_server.recent import remember
from tokenservice_server.storage import keys
from tokenservice_server.storage.audit_store import audit_in_step_args
from tokenservice_server.storage.revocation_feed import index_attribute
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.storage.token_limits import limited, token_limit_args, token_limit_keys

__all__ = [
    "ACCESS_FIELDS",
    "RedisTokenStore",
    "decode_fields",
    "decode_token",
    "encode_access_token",
]

_RECORD_KEY = {TokenKind.ACCESS: keys.access_token_key, TokenKind.REFRESH: keys.refresh_token_key}
_MEMBER = {TokenKind.ACCESS: keys.access_token_member, TokenKind.REFRESH: keys.refresh_token_member}
_STAT_FIELDS = (
    "access_tokens_issued",
    "refresh_tokens_issued",
    "authorization_codes_issued",
    "access_tokens_revoked",
    "refresh_tokens_revoked",
    "introspections",
    "checks_allowed",
    "checks_denied",
    "refresh_token_reuse",
    "authorization_code_reuse",
)


def encode_access_token(record: TokenRecord) -> list[str]:
    """The token hash's fields as HSET arguments, in ``ACCESS_FIELDS`` order, the empty
    ones left out (a client_credentials token has only c, s, i and e)."""
    encoded = ["c", record.client_id]
    if record.scopes:
        encoded += ("s", " ".join(sorted(record.scopes)))
    encoded += ("i", str(record.issued_at), "e", str(record.expires_at))
    if record.jti != derived_jti(record.digest):
        encoded += ("j", record.jti)
    for name, value in (
        ("u", record.subject),
        ("a", " ".join(record.audiences)),
        ("n", record.session_id),
        ("f", record.family_id),
    ):
        if value:
            encoded += (name, value)
    return encoded


#: The fields of an access token's hash in the order ``check_access_token.lua`` returns
#: their values (its HMGET): client, scopes, issued, expires, jti, subject, audiences,
#: session, family.
ACCESS_FIELDS = ("c", "s", "i", "e", "j", "u", "a", "n", "f")


def decode_fields(
    digest: str,
    values: Sequence[bytes],
    kind: TokenKind = TokenKind.ACCESS,
    rotated: bool = False,
) -> TokenRecord:
    """The record of a token's hash from the values of ``ACCESS_FIELDS``, in order
    (``b""`` for an absent one), as the auth DB returns them.

    On every Check through Redis, introspection and caller lookup, so: a record decoded
    lately is handed out again when the same token comes back with the very same values
    (``_DECODED``); otherwise the values are read as bytes (no decoded copy of the hash),
    the scope and audience strings, which repeat across a client's tokens, are parsed
    once each, and the record is made positionally (keywords cost twice as much for its
    twelve fields)."""
    known = _DECODED.get(digest)
    if known is not None:
        record = known[1]
        if known[0] == values and record.kind is kind and record.rotated is rotated:
            return record
    client_id, scopes, issued_at, expires_at, jti, subject, audiences, session, family = values
    record = TokenRecord(
        digest,
        client_id.decode(),
        _scopes(scopes),
        int(issued_at),
        int(expires_at),
        jti.decode() if jti else derived_jti(digest),
        subject.decode(),
        _audiences(audiences),
        session.decode(),
        family.decode(),
        kind,
        rotated,
    )
    remember(_DECODED, digest, (values, record), _DECODED_MAX)
    return record


#: Records decoded lately, by digest, with the values each was decoded from. The same hot
#: tokens are read over and over (with the default per-client limit every Check goes
#: through Redis), and decoding one cost ~10,000 instructions; a record is only handed out
#: again for equal values, kind and state, so this saves CPU and changes no answer (a
#: revoked or expired token is still found so by its lookup, which happens every time).
#: The event loop's thread is the only user; bounded, the oldest entry goes first.
_DECODED_MAX = 4096
_DECODED: dict[str, tuple[Sequence[bytes], TokenRecord]] = {}


def decode_token(
    digest: str, raw: Mapping[bytes, bytes], kind: TokenKind = TokenKind.ACCESS
) -> TokenRecord:
    """The record of a token's hash (``raw``: its fields, as HGETALL returns them)."""
    get = raw.get
    values = [raw[b"c"], get(b"s", b""), raw[b"i"], raw[b"e"], get(b"j", b"")]
    values += (get(b"u", b""), get(b"a", b""), get(b"n", b""), get(b"f", b""))
    return decode_fields(digest, values, kind, get(b"st") == b"rotated")


@functools.lru_cache(maxsize=4096)
def _scopes(value: bytes) -> frozenset[str]:
    return frozenset(value.decode().split())


@functools.lru_cache(maxsize=1024)
def _audiences(value: bytes) -> tuple[str, ...]:
    return tuple(value.decode().split())


decode_access_token = decode_token


class RedisTokenStore:
    def __init__(
        self, redis: Redis, scripts: ScriptRegistry, *, audit_max_entries: int = 10_000
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._audit_max_entries = audit_max_entries  # auth_audit bound (revoke_index)
        # This replica's hot-token cache: what it revokes is dropped without waiting for
        # the pub/sub echo (other replicas get the message published by the script).
        self.token_cache: TokenCache | None = None

    async def issue_access_token(
        self,
        record: TokenRecord,
        *,
        client_generation: int,
        ttl: int,
        limits: TokenRequestLimits,
    ) -> bool | Admission:
        """True issued, False stale client, or the rate limiter's refusal."""
        issued = await self._scripts.call(
            "issue_access_token",
            keys=[
                keys.client_key(record.client_id),
                keys.access_token_key(record.digest),
                keys.client_tokens_key(record.client_id),
                keys.TOKEN_CLEANUP,
                keys.AUTH_STATS,
                *token_limit_keys(limits),
            ],
            args=[
                client_generation,
                ttl,
                record.expires_at,
                record.digest,
                *token_limit_args(limits),
                *encode_access_token(record),
            ],
        )
        if isinstance(issued, list):
            return limited(*issued)
        return bool(issued)

    async def find_token(self, kind: TokenKind, digest: str) -> TokenRecord | None:
        found = await self.find_tokens([(kind, digest)])
        return found[0]

    async def find_tokens(self, wanted: list[tuple[TokenKind, str]]) -> list[TokenRecord | None]:
        """Several lookups in one round trip (e.g. the caller's token and the token being
        introspected): ``lookup_tokens.lua`` reads each record's fields in a fixed order
        and its blacklist marker (a revoked token stays revoked even where a stale replica
        or a restored backup still held its record)."""
        token_keys: list[str] = []
        for kind, digest in wanted:
            token_keys += (_RECORD_KEY[kind](digest), keys.blacklist_key(digest))
        reply = await self._scripts.call("lookup_tokens", keys=token_keys, args=())
        found: list[TokenRecord | None] = []
        for index, (kind, digest) in enumerate(wanted):
            values = reply[10 * index : 10 * index + 10]
            if values[0]:
                found.append(decode_fields(digest, values[:9], kind, values[9] == b"rotated"))
            else:
                found.append(None)
        return found

    async def revoke_token(self, client_id: str, kind: TokenKind, digest: str) -> int:
        revoked, family = await self._scripts.call(
            "revoke_token",
            keys=[_RECORD_KEY[kind](digest)],
            args=[client_id, _MEMBER[kind](digest), keys.AUTH_ROOT],
        )
        if self.token_cache is not None:
            # At once on this replica; the others hear it from the script's publication.
            family = family.decode() if isinstance(family, bytes) else str(family)
            self.token_cache.invalidate(
                [token_key(digest)] + ([family_key(family)] if family else [])
            )
        return int(revoked)

    async def revoke_index(self, index_key: str, audit: AuditInStep | None = None) -> int:
        revoked = await self._scripts.call(
            "revoke_index",
            # No key to delete with the index: the root stands for none (ACL-safe).
            keys=[index_key, keys.AUTH_ROOT, keys.SESSION_CLEANUP, keys.AUDIT_STREAM],
            args=[keys.AUTH_ROOT, "", *audit_in_step_args(audit, self._audit_max_entries)],
        )
        if audit is not None:
            audit.written = True
        if self.token_cache is not None:
            self.token_cache.invalidate(index_attribute(index_key))
        return max(0, int(revoked))

    async def revoke_subject(self, subject: str, audit: AuditInStep | None = None) -> int:
        return await self.revoke_index(keys.subject_tokens_key(subject), audit)

    async def revoke_client_tokens(self, client_id: str, audit: AuditInStep | None = None) -> int:
        return await self.revoke_index(keys.client_tokens_key(client_id), audit)

    async def statistics(self) -> dict[str, int]:
        """Counters of ``auth_stats`` plus live counts (members not yet expired)."""
        now = int(time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.AUTH_STATS)
            pipe.zcount(keys.TOKEN_CLEANUP, now + 1, "+inf")
            pipe.zcount(keys.REFRESH_CLEANUP, now + 1, "+inf")
            pipe.zcount(keys.SESSION_CLEANUP, now + 1, "+inf")
            raw, access, refresh, sessions = await pipe.execute()
        counters = {key.decode(): int(value) for key, value in raw.items()}
        stats = {name: counters.get(name, 0) for name in _STAT_FIELDS}
        stats.update(active_access_tokens=access, active_refresh_tokens=refresh)
        stats["active_sessions"] = sessions
        return stats
