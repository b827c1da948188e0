"""Token records: what the server remembers about an issued token (never the token)."""

from __future__ import annotations

import functools
import hashlib
from enum import StrEnum

from tokenservice_server.domain.value_object import value_object

__all__ = [
    "AccessTokenRecord",
    "AuthorizationCode",
    "Caller",
    "GrantResult",
    "Session",
    "TokenKind",
    "TokenRecord",
    "caller_of",
    "derived_jti",
]


@functools.lru_cache(maxsize=4096)
def derived_jti(digest: str) -> str:
    """The JWT ID of a token (RFC 7662 ``jti``): 16 hex characters derived from its SHA-256,
    so it is unique per token without being stored (32 bytes less per live token).
    Every lookup of a token needs it: a hot token's is computed once."""
    return hashlib.sha256(b"tokenservice-jti:" + digest.encode()).hexdigest()[:16]


class TokenKind(StrEnum):
    ACCESS = "access_token"
    REFRESH = "refresh_token"


@value_object
class TokenRecord:
    """Metadata of one token, stored under the SHA-256 of the token."""

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
    kind: TokenKind = TokenKind.ACCESS
    rotated: bool = False  # a refresh token that was already exchanged

    def ttl(self, now: float) -> int:
        return max(0, self.expires_at - int(now))


# The name the access-token code path grew up with.
AccessTokenRecord = TokenRecord


@value_object
class GrantResult:
    """What an atomic grant step (code redemption, refresh rotation) reports."""

    status: str  # "ok", "limited" or the failure the script found
    scope: str = ""
    subject: str = ""
    session_id: str = ""
    family_id: str = ""
    retry_after: float = 0.0  # when "limited": seconds until a retry is admitted
    limited_by: str = ""  # when "limited": the refusing bucket


@value_object
class Caller:
    """Who is calling an RPC, resolved from the bearer token in the call metadata."""

    client_id: str
    scopes: frozenset[str]
    subject: str = ""
    token_digest: str = ""
    peer_identity: str = ""  # the mTLS client-certificate identity, when any

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def caller_of(record: TokenRecord) -> Caller:
    """The caller a token's bearer is: its client, scopes and subject."""
    # Positional (client_id, scopes, subject, token_digest): keywords cost twice as much.
    return Caller(record.client_id, record.scopes, record.subject, record.digest)


@value_object
class AuthorizationCode:
    """A pending authorization (RFC 6749 section 4.1.2), stored under SHA-256(code)."""

    client_id: str
    redirect_uri: str
    scopes: frozenset[str]
    subject: str
    family_id: str
    challenge: str = ""
    challenge_method: str = ""  # "S256" or "plain" when challenge is set
    session_id: str = ""


@value_object
class Session:
    """A user's login session; tokens bound to it die with it."""

    session_id: str
    subject: str
    client_id: str
    create_time: float  # Unix seconds
    expire_time: float  # Unix seconds
    attributes: dict[str, str]
