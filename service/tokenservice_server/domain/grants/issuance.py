"""The tokens one grant step issues: generated before the atomic storage step, returned
to the client only once that step succeeded."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential
from tokenservice_server.domain.grants.client_credentials import IssuedTokens, TokenLifetimes
from tokenservice_server.domain.scopes import parse_scope
from tokenservice_server.domain.tokens import GrantResult

__all__ = ["TokenPair", "plan_token_pair"]

# (sha256 of the token, jti, TTL seconds): what storage needs to store a token.
StoredToken = tuple[str, str, int]


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    access_ttl: int
    refresh_token: str  # "" when the client may not refresh
    refresh_ttl: int

    @property
    def access(self) -> StoredToken:
        return (digest(self.access_token), secrets.token_hex(8), self.access_ttl)

    @property
    def refresh(self) -> StoredToken | None:
        if not self.refresh_token:
            return None
        return (digest(self.refresh_token), secrets.token_hex(8), self.refresh_ttl)

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
