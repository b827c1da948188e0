"""The refresh token grant with rotation and reuse detection (RFC 6749 section 6,
RFC 9700 section 4.14.2).

Every use rotates the token; a rotated token presented again revokes its whole grant
family, except once within the configured grace period (default 0), for a client whose
response was lost. Public clients refresh without a secret: the rotation itself is what
binds the token to them (RFC 9700 section 4.14.2).
"""

from __future__ import annotations

from collections.abc import Callable

from tokenservice_server.domain.authentication import authenticate_for_grant
from tokenservice_server.domain.client_attempts import with_current_client
from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import ClientRecord, GrantType
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    is_well_formed,
)
from tokenservice_server.domain.errors import (
    InvalidGrant,
    InvalidRequest,
)
from tokenservice_server.domain.grants.client_credentials import IssuedTokens, TokenLifetimes
from tokenservice_server.domain.grants.issuance import plan_token_pair, settle
from tokenservice_server.domain.ports import GrantStore
from tokenservice_server.domain.rate_limiting import TokenRequestLimits
from tokenservice_server.domain.scopes import format_scope, parse_scope

__all__ = ["RefreshTokenGrant"]

_FAILURES = {
    "invalid": "the refresh token is invalid, expired, revoked or issued to another client",
    "reused": "the refresh token was already used; its grant is revoked (RFC 9700 4.14.2)",
    "session_ended": "the session this grant belonged to has ended",
}


class RefreshTokenGrant:
    def __init__(
        self,
        directory: ClientDirectory,
        grants: GrantStore,
        hasher: SecretHasher,
        lifetimes: TokenLifetimes,
        clock: Callable[[], float],
        *,
        reuse_grace: float,
    ) -> None:
        self._directory = directory
        self._grants = grants
        self._hasher = hasher
        self._lifetimes = lifetimes
        self._clock = clock
        self._grace_ms = round(reuse_grace * 1000)

    async def refresh(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        scope: str,
        limits: TokenRequestLimits,
    ) -> IssuedTokens:
        if not refresh_token:
            raise InvalidRequest("refresh_token", "required")
        requested = parse_scope(scope)
        if not is_well_formed(refresh_token, CredentialKind.REFRESH_TOKEN):
            raise InvalidGrant(_FAILURES["invalid"], field="refresh_token")

        async def attempt(record: ClientRecord | None) -> IssuedTokens | None:
            now = self._clock()
            client = authenticate_for_grant(
                record, client_secret, self._hasher, now, GrantType.REFRESH_TOKEN
            )
            pair = plan_token_pair(client, self._lifetimes, refresh=True)
            assert pair.refresh is not None
            result = await self._grants.rotate_refresh(
                digest(refresh_token),
                client_id=client.client_id,
                client_generation=client.generation,
                scope=format_scope(requested),
                now_ms=round(now * 1000),
                grace_ms=self._grace_ms,
                access=pair.access,
                refresh=pair.refresh,
                audiences=client.spec.audiences,
                limits=limits,
            )
            return settle(pair, result, _FAILURES, field="refresh_token")

        return await with_current_client(self._directory, client_id, attempt)
