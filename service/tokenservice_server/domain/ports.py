"""What the domain needs from storage; one Redis implementation lives in storage/.

Each method is one Redis round trip and each state change is atomic.
"""

from __future__ import annotations

from typing import Protocol

from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.tokens import AccessTokenRecord

__all__ = ["ClientStore", "TokenStore"]


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
        self, record: AccessTokenRecord, *, client_generation: int, ttl: int
    ) -> bool:
        """Store and index a token iff the client is still at ``client_generation``
        (False means the caller's copy of the client is stale)."""

    async def find_access_token(self, digest: str) -> AccessTokenRecord | None:
        """The live, unrevoked token with this digest, or None."""
