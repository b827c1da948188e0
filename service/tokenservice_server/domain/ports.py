"""What the domain needs from storage; one Redis implementation lives in storage/.

Each method is one Redis round trip and each state change is atomic.
"""

from __future__ import annotations

from typing import Protocol

from tokenservice_server.domain.audit import AuditInStep
from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.rate_limiting import Admission, RateLimitPolicy, TokenRequestLimits
from tokenservice_server.domain.tokens import (
    AccessTokenRecord,
    AuthorizationCode,
    GrantResult,
    TokenKind,
    TokenRecord,
)

__all__ = [
    "AccessCheckStore",
    "ClientStore",
    "GrantStore",
    "RateLimitStore",
    "StatsSink",
    "TokenStore",
]


class ClientStore(Protocol):
    async def create(self, record: ClientRecord) -> bool:
        """Store a new client; False when the id is taken."""

    async def get(self, client_id: str) -> ClientRecord | None: ...

    async def list_after(self, after: str, limit: int) -> list[ClientRecord]:
        """Up to ``limit`` clients with ids strictly greater than ``after``, by id."""

    async def replace(self, record: ClientRecord, expected_generation: int) -> bool:
        """Overwrite iff the stored generation still is ``expected_generation``."""

    async def delete(self, client_id: str) -> int | None:
        """Remove the client and revoke all its tokens; None if it did not exist,
        else the number of tokens revoked."""


class TokenStore(Protocol):
    async def issue_access_token(
        self,
        record: AccessTokenRecord,
        *,
        client_generation: int,
        ttl: int,
        limits: TokenRequestLimits,
    ) -> bool | Admission:
        """Count the request against ``limits`` and store and index the token iff the
        client is still at ``client_generation``: True issued, False the caller's copy of
        the client is stale, or the rate limiter's refusal."""

    async def find_tokens(self, wanted: list[tuple[TokenKind, str]]) -> list[TokenRecord | None]:
        """Several lookups in one round trip, in order; None for unknown or revoked."""

    async def revoke_token(self, client_id: str, kind: TokenKind, digest: str) -> int:
        """Revoke a token iff it belongs to ``client_id`` (a refresh token takes its
        family with it); the number revoked."""

    async def revoke_subject(self, subject: str, audit: AuditInStep | None = None) -> int:
        """Revoke every token of ``subject``, writing ``audit`` in the same step."""

    async def revoke_client_tokens(self, client_id: str, audit: AuditInStep | None = None) -> int:
        """Revoke every token of ``client_id``, writing ``audit`` in the same step."""

    async def statistics(self) -> dict[str, int]: ...


class GrantStore(Protocol):
    async def store_code(
        self, digest: str, code: AuthorizationCode, *, client_generation: int, ttl: int
    ) -> int:
        """1 stored, 0 stale client, -1 the session is gone, -2 another subject's session."""

    async def redeem_code(
        self,
        digest: str,
        *,
        client_id: str,
        client_generation: int,
        redirect_uri: str,
        verifier_s256: str,
        verifier: str,
        now: int,
        access: tuple[str, str, int],
        refresh: tuple[str, str, int] | None,
        audiences: tuple[str, ...],
        limits: TokenRequestLimits,
    ) -> GrantResult: ...

    async def rotate_refresh(
        self,
        digest: str,
        *,
        client_id: str,
        client_generation: int,
        scope: str,
        now_ms: int,
        grace_ms: int,
        access: tuple[str, str, int],
        refresh: tuple[str, str, int],
        audiences: tuple[str, ...],
        limits: TokenRequestLimits,
    ) -> GrantResult: ...


class RateLimitStore(Protocol):
    async def admit_token_request(
        self, client_id: str, client_ip: str, policy: RateLimitPolicy
    ) -> Admission:
        """Count one token request in the client's and the IP's buckets, or in neither
        ('' skips a bucket); the client record's own limit replaces the default."""


class AccessCheckStore(Protocol):
    async def resolve_and_admit(
        self, digest: str, *, client_ip: str, route_key: str, policy: RateLimitPolicy
    ) -> tuple[TokenRecord | None, Admission]:
        """The live, unrevoked access token with this digest (or None), and whether the
        request fits the IP's, the token client's and the route's buckets."""


class StatsSink(Protocol):
    async def increment(self, counts: dict[str, int]) -> None:
        """Add ``counts`` to the ``auth_stats`` counters."""
