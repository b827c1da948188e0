"""Token revocation (RFC 7009) and bulk revocation for operators.

"The authorization server responds with HTTP status code 200 if the token has been
revoked successfully or if the client submitted an invalid token" (section 2.2): unknown,
expired, already revoked, malformed and other clients' tokens all succeed silently, so
the answer reveals nothing. A client may revoke only its own tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenservice_server.domain.audit import AuditInStep
from tokenservice_server.domain.authentication import authenticate_client
from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import validate_client_id
from tokenservice_server.domain.credentials import SecretHasher, digest
from tokenservice_server.domain.errors import InvalidClient, InvalidRequest
from tokenservice_server.domain.introspection import MAX_TOKEN, token_kind
from tokenservice_server.domain.ports import TokenStore
from tokenservice_server.domain.tokens import Caller

__all__ = ["Revoker"]


class Revoker:
    def __init__(
        self,
        directory: ClientDirectory,
        tokens: TokenStore,
        hasher: SecretHasher,
        clock: Callable[[], float],
    ) -> None:
        self._directory = directory
        self._tokens = tokens
        self._hasher = hasher
        self._clock = clock

    async def _requesting_client(
        self, caller: Caller | None, client_id: str, client_secret: str
    ) -> str:
        if client_id:
            record = await self._directory.get(client_id)
            return authenticate_client(record, client_secret, self._hasher, self._clock()).client_id
        if caller is not None:
            return caller.client_id
        raise InvalidClient("authenticate with client_id (and client_secret) or a bearer token")

    async def revoke(
        self, caller: Caller | None, client_id: str, client_secret: str, token: str
    ) -> int:
        if not token:
            raise InvalidRequest("token", "required")
        if len(token) > MAX_TOKEN:
            raise InvalidRequest("token", f"at most {MAX_TOKEN} characters", limit=MAX_TOKEN)
        owner = await self._requesting_client(caller, client_id, client_secret)
        hashed = digest(token)
        kind = token_kind(token, hashed)
        if kind is None:
            return 0  # RFC 7009 2.2: an invalid token is not an error
        return await self._tokens.revoke_token(owner, kind, hashed)

    async def revoke_subject(self, subject: str, audit: AuditInStep | None = None) -> int:
        if not subject or len(subject) > 256:
            raise InvalidRequest("subject", "1-256 characters")
        return await self._tokens.revoke_subject(subject, audit)

    async def revoke_client(self, client_id: str, audit: AuditInStep | None = None) -> int:
        validate_client_id(client_id)
        return await self._tokens.revoke_client_tokens(client_id, audit)
