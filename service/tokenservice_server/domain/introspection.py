"""Token introspection (RFC 7662).

"If the introspection call is properly authorized but the token is not active, does not
exist on this server, or the protected resource is not allowed to introspect this
particular token, then the authorization server MUST return an introspection response
with the 'active' field set to false" (section 2.2): a caller learns nothing about
tokens it may not see. Callers may see every token with scope tokenservice.introspect,
and otherwise only tokens issued to themselves.

The caller's own bearer token and the introspected token come from the hot-token cache
when this replica has seen them live recently; the rest are looked up in one pipelined
round trip. Introspections are counted in the stats buffer (flushed to ``auth_stats``).
"""

from __future__ import annotations

from collections.abc import Callable

from tokenservice_server.domain import scopes
from tokenservice_server.domain.authentication import bearer_token
from tokenservice_server.domain.credentials import CredentialKind, digest, is_well_formed_known
from tokenservice_server.domain.errors import InvalidRequest, InvalidToken
from tokenservice_server.domain.stats_buffer import StatsBuffer
from tokenservice_server.domain.token_lookup import TokenLookup
from tokenservice_server.domain.tokens import TokenKind, TokenRecord
from tokenservice_server.domain.value_object import value_object

__all__ = ["Introspection", "Introspector", "token_kind"]

MAX_TOKEN = 512


def token_kind(token: str, hashed: str) -> TokenKind | None:
    """The kind of a well-formed token (``hashed``: its digest), read from its prefix;
    None if malformed."""
    if is_well_formed_known(token, CredentialKind.ACCESS_TOKEN, hashed):
        return TokenKind.ACCESS
    if is_well_formed_known(token, CredentialKind.REFRESH_TOKEN, hashed):
        return TokenKind.REFRESH
    return None


@value_object
class Introspection:
    active: bool
    record: TokenRecord | None = None
    issuer: str = ""


class Introspector:
    def __init__(
        self,
        lookup: TokenLookup,
        stats: StatsBuffer,
        clock: Callable[[], float],
        issuer: str,
    ) -> None:
        self._lookup = lookup
        self._stats = stats
        self._clock = clock
        self._issuer = issuer

    async def introspect(self, authorization: str | None, token: str) -> Introspection:
        presented = bearer_token(authorization)
        if len(token) > MAX_TOKEN:
            raise InvalidRequest("token", f"at most {MAX_TOKEN} characters", limit=MAX_TOKEN)
        lookup = self._lookup
        hashed = digest(presented)
        # The hot-token cache first: a hit is a token this service issued (well-formed by
        # construction); a miss is checked before it costs a lookup.
        caller = lookup.cached(hashed)
        if caller is None and not is_well_formed_known(
            presented, CredentialKind.ACCESS_TOKEN, hashed
        ):
            raise InvalidToken("the access token is malformed")
        target_digest = digest(token)
        kind = token_kind(token, target_digest)
        target = lookup.cached(target_digest) if kind is TokenKind.ACCESS else None
        # What the cache did not answer: one round trip for both.
        missing = [(TokenKind.ACCESS, hashed)] if caller is None else []
        if kind is not None and target is None:
            missing.append((kind, target_digest))
        if missing:
            found = iter(await lookup.look_up(missing))
            if caller is None:
                caller = next(found)
            if kind is not None and target is None:
                target = next(found)
        self._stats.add("introspections")
        now = self._clock()
        if caller is None or caller.expires_at <= now:
            raise InvalidToken("the access token is invalid, expired or revoked")
        if target is None or target.expires_at <= now or target.rotated:
            return _INACTIVE
        visible = scopes.INTROSPECT in caller.scopes or target.client_id == caller.client_id
        if not visible:
            return _INACTIVE
        return Introspection(True, target, self._issuer)  # active, record, issuer


_INACTIVE = Introspection(active=False)
