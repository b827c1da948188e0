"""The tokens one grant step issues: generated before the atomic storage step, returned
to the client only once that step succeeded."""

from __future__ import annotations

from collections.abc import Mapping

from tokenservice_server.domain.client_attempts import Settled
from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential
from tokenservice_server.domain.errors import InvalidGrant, InvalidScope
from tokenservice_server.domain.grants.client_credentials import IssuedTokens, TokenLifetimes
from tokenservice_server.domain.rate_limiting import rate_limited
from tokenservice_server.domain.scopes import parse_scope
from tokenservice_server.domain.tokens import GrantResult
from tokenservice_server.domain.value_object import value_object

__all__ = ["TokenPair", "plan_token_pair", "settle"]

# (sha256 of the token, jti, TTL seconds): what storage needs to store a token. The jti is
# "": derived from the digest when read (domain.tokens.derived_jti), never stored.
StoredToken = tuple[str, str, int]


@value_object
class TokenPair:
    access_token: str
    access_ttl: int
    refresh_token: str  # "" when the client may not refresh
    refresh_ttl: int

    @property
    def access(self) -> StoredToken:
        return (digest(self.access_token), "", self.access_ttl)

    @property
    def refresh(self) -> StoredToken | None:
        if not self.refresh_token:
            return None
        return (digest(self.refresh_token), "", self.refresh_ttl)

    def issued(self, result: GrantResult) -> IssuedTokens:
        return IssuedTokens(
            access_token=self.access_token,
            expires_in=self.access_ttl,
            scopes=parse_scope(result.scope),
            refresh_token=self.refresh_token,
            refresh_expires_in=self.refresh_ttl if self.refresh_token else 0,
            family_id=result.family_id,
            session_id=result.session_id,
        )


def plan_token_pair(client: ClientRecord, lifetimes: TokenLifetimes, *, refresh: bool) -> TokenPair:
    """Fresh tokens with the client's lifetimes (per-client overrides win)."""
    return TokenPair(
        access_token=new_credential(CredentialKind.ACCESS_TOKEN),
        access_ttl=client.spec.access_token_ttl or lifetimes.access_token,
        refresh_token=new_credential(CredentialKind.REFRESH_TOKEN) if refresh else "",
        refresh_ttl=client.spec.refresh_token_ttl or lifetimes.refresh_token,
    )


def settle(
    pair: TokenPair, result: GrantResult, failures: Mapping[str, str], *, field: str
) -> IssuedTokens | None:
    """What a grant script's answer means: the issued tokens, None when the client record
    was stale (re-read and retry), or a final failure decided by the script (which has
    already counted the request against the rate limits)."""
    if result.status == "stale":
        return None
    if result.status == "limited":
        raise Settled(rate_limited(result))
    if result.status == "invalid_scope":
        raise Settled(
            InvalidScope("scope wider than the original grant (RFC 6749 section 6)", field="scope")
        )
    if result.status != "ok":
        raise Settled(InvalidGrant(failures.get(result.status, "invalid grant"), field=field))
    return pair.issued(result)
