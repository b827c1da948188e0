"""The client credentials grant (RFC 6749 section 4.4).

"The client credentials grant type MUST only be used by confidential clients"
(section 4.4); the token response carries no refresh token (section 4.4.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenservice_server.domain.authentication import authenticate_client
from tokenservice_server.domain.client_attempts import STALE, Settled, with_current_client
from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import ClientRecord, ClientType, GrantType
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    new_credential,
)
from tokenservice_server.domain.errors import (
    InvalidClient,
    InvalidScope,
    UnauthorizedClient,
)
from tokenservice_server.domain.ports import TokenStore
from tokenservice_server.domain.rate_limiting import Admission, TokenRequestLimits, refused
from tokenservice_server.domain.scopes import format_scope, parse_scope
from tokenservice_server.domain.tokens import AccessTokenRecord, derived_jti
from tokenservice_server.domain.value_object import value_object

__all__ = ["ClientCredentialsGrant", "IssuedTokens", "TokenLifetimes", "resolve_scope"]


@dataclass(frozen=True)
class TokenLifetimes:
    access_token: int
    refresh_token: int


@value_object
class IssuedTokens:
    access_token: str
    expires_in: int
    scopes: frozenset[str]
    refresh_token: str = ""
    refresh_expires_in: int = 0
    family_id: str = ""
    session_id: str = ""


def resolve_scope(requested: str, record: ClientRecord) -> frozenset[str]:
    """RFC 6749 section 3.3: an omitted scope means the client's registered scopes;
    a requested scope must be a subset of them."""
    allowed = frozenset(record.spec.scopes)
    wanted = parse_scope(requested)
    if not wanted:
        return allowed
    extra = wanted - allowed
    if extra:
        raise InvalidScope(
            f"scope not allowed for this client: {format_scope(extra)}", field="scope"
        )
    return wanted


class ClientCredentialsGrant:
    def __init__(
        self,
        directory: ClientDirectory,
        tokens: TokenStore,
        hasher: SecretHasher,
        lifetimes: TokenLifetimes,
        clock: Callable[[], float],
    ) -> None:
        self._directory = directory
        self._tokens = tokens
        self._hasher = hasher
        self._lifetimes = lifetimes
        self._clock = clock

    async def issue(
        self, client_id: str, client_secret: str, scope: str, limits: TokenRequestLimits
    ) -> IssuedTokens:
        async def attempt(record: ClientRecord | None) -> IssuedTokens | None:
            now = self._clock()
            client = authenticate_client(record, client_secret, self._hasher, now)
            if client.spec.client_type is not ClientType.CONFIDENTIAL:
                raise InvalidClient("client_credentials requires a confidential client")
            if GrantType.CLIENT_CREDENTIALS not in client.spec.grant_types:
                raise UnauthorizedClient("this client may not use the client_credentials grant")
            scopes = resolve_scope(scope, client)
            ttl = client.spec.access_token_ttl or self._lifetimes.access_token
            token = new_credential(CredentialKind.ACCESS_TOKEN)
            issued_at = int(now)
            token_digest = digest(token)
            # Positional (digest, client_id, scopes, issued_at, expires_at, jti, subject,
            # audiences): keywords cost twice as much for a record of twelve fields.
            token_record = AccessTokenRecord(
                token_digest,
                client.client_id,
                scopes,
                issued_at,
                issued_at + ttl,
                derived_jti(token_digest),
                "",
                client.spec.audiences,
            )
            stored = await self._tokens.issue_access_token(
                token_record, client_generation=client.generation, ttl=ttl, limits=limits
            )
            if isinstance(stored, Admission):
                raise Settled(refused(stored))
            if not stored:
                return STALE
            return IssuedTokens(access_token=token, expires_in=ttl, scopes=scopes)

        return await with_current_client(self._directory, client_id, attempt)
