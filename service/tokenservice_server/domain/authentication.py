"""Who is calling: client authentication (RFC 6749 section 2.3) and bearer tokens
presented in call metadata (RFC 6750 section 2.1)."""

from __future__ import annotations

from collections.abc import Callable

from tokenservice_server.domain.clients import ClientRecord, ClientType, GrantType
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    is_well_formed,
)
from tokenservice_server.domain.errors import (
    DomainError,
    InvalidClient,
    InvalidToken,
    Unauthenticated,
    UnauthorizedClient,
)
from tokenservice_server.domain.token_lookup import TokenLookup
from tokenservice_server.domain.tokens import Caller, TokenKind, caller_of

__all__ = ["BearerAuthenticator", "authenticate_client", "authenticate_for_grant", "bearer_token"]

# Compared against when the client does not exist, so an unknown client id costs the
# same time as a wrong secret and timing does not reveal which ids exist.
_DUMMY_HASH = "hs256:" + "0" * 64


def authenticate_client(
    record: ClientRecord | None, secret: str, hasher: SecretHasher, now: float
) -> ClientRecord:
    """The authenticated client, or InvalidClient without saying what was wrong."""
    if record is None:
        hasher.verify(secret, _DUMMY_HASH)
        raise InvalidClient()
    if record.spec.client_type is ClientType.PUBLIC:
        if secret:
            # RFC 6749 section 2.3: public clients have no credentials to present.
            raise InvalidClient("public clients authenticate without a secret")
        return record
    if not secret or record.secret_hash is None:
        raise InvalidClient()
    if hasher.verify(secret, record.secret_hash):
        hasher.check_current(record.client_id, secret, record.secret_hash)
        return record
    previous, until = record.previous_secret_hash, record.client.previous_secret_expire_time
    in_grace = previous is not None and until is not None and now < until
    if in_grace and previous is not None and hasher.verify(secret, previous):
        return record
    raise InvalidClient()


def authenticate_for_grant(
    record: ClientRecord | None,
    secret: str,
    hasher: SecretHasher,
    now: float,
    grant: GrantType,
) -> ClientRecord:
    """Client authentication first (it reveals nothing about the client's grants), then
    the grant must be one the client is registered for (RFC 6749 section 5.2
    unauthorized_client)."""
    client = authenticate_client(record, secret, hasher, now)
    if grant not in client.spec.grant_types:
        raise UnauthorizedClient(f"this client may not use the {grant.value} grant")
    return client


def bearer_token(authorization: str | None) -> str:
    """The token of an ``authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        raise Unauthenticated("missing bearer token in the authorization metadata")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("authorization metadata must be 'Bearer <access token>'")
    return token.strip()


class BearerAuthenticator:
    """Resolves an access token to the calling client and its scopes (the hot-token
    cache first: a caller's repeated calls cost no lookup round trip)."""

    def __init__(self, lookup: TokenLookup, clock: Callable[[], float]) -> None:
        self._lookup = lookup
        self._clock = clock

    def cached_caller(self, authorization: str) -> Caller | None:
        """The caller of a hot token (a live one in the hot-token cache) without waiting
        for anything; None for any other value, which :meth:`resolve` then resolves or
        refuses. A cache hit is a token this service issued (its SHA-256 is a cached
        live token's), so well-formed by construction: no checksum here."""
        try:
            token = bearer_token(authorization)
        except DomainError:
            return None
        hit = self._lookup.cached_entry(digest(token))
        if hit is None or hit.record.expires_at <= self._clock():
            return None
        return hit.caller

    async def resolve(self, authorization: str | None) -> Caller:
        """The caller of a token :meth:`cached_caller` did not answer: refused without
        Redis if malformed, else looked up (one round trip)."""
        token = bearer_token(authorization)
        if not is_well_formed(token, CredentialKind.ACCESS_TOKEN):
            raise InvalidToken("the access token is malformed")
        (record,) = await self._lookup.look_up([(TokenKind.ACCESS, digest(token))])
        if record is None or record.expires_at <= self._clock():
            raise InvalidToken("the access token is invalid, expired or revoked")
        return caller_of(record)
