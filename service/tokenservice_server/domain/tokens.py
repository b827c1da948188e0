"""Token records: what the server remembers about an issued token (never the token)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AccessTokenRecord", "Caller", "TokenKind"]


class TokenKind(StrEnum):
    ACCESS = "access_token"
    REFRESH = "refresh_token"


@dataclass(frozen=True)
class AccessTokenRecord:
    """Metadata of one access token, stored under the SHA-256 of the token."""

    digest: str
    client_id: str
    scopes: frozenset[str]
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds
    jti: str
    subject: str = ""  # empty for client_credentials: the client acts for itself
    audiences: tuple[str, ...] = ()
    session_id: str = ""
    family_id: str = ""  # grant family (authorization code / refresh chain)

    def ttl(self, now: float) -> int:
        return max(0, self.expires_at - int(now))


@dataclass(frozen=True)
class Caller:
    """Who is calling an RPC, resolved from the bearer token in the call metadata."""

    client_id: str
    scopes: frozenset[str]
    subject: str = ""
    token_digest: str = ""

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
