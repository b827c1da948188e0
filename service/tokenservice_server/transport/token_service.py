"""TokenService servicer: protobuf <-> domain for the token endpoint and friends."""

from __future__ import annotations

from typing import Any

import grpc

from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.domain.errors import InvalidRequest, UnsupportedGrantType
from tokenservice_server.domain.grants.client_credentials import ClientCredentialsGrant
from tokenservice_server.domain.scopes import format_scope

__all__ = ["TokenServiceServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_MAX_FIELD = 4096


def _bounded(request: pb.IssueTokenRequest) -> None:
    for name in ("client_id", "client_secret", "scope", "code", "redirect_uri", "code_verifier"):
        if len(getattr(request, name)) > _MAX_FIELD:
            raise InvalidRequest(name, f"longer than {_MAX_FIELD} characters", limit=_MAX_FIELD)


class TokenServiceServicer:
    def __init__(self, client_credentials: ClientCredentialsGrant) -> None:
        self._client_credentials = client_credentials

    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        _bounded(request)
        if not request.client_id:
            raise InvalidRequest("client_id", "required")
        if request.grant_type == pb.GRANT_TYPE_CLIENT_CREDENTIALS:
            issued = await self._client_credentials.issue(
                request.client_id, request.client_secret, request.scope
            )
        elif request.grant_type == pb.GRANT_TYPE_UNSPECIFIED:
            raise UnsupportedGrantType("grant_type is required", field="grant_type")
        else:
            known = request.grant_type in pb.GrantType.values()
            name = pb.GrantType.Name(request.grant_type) if known else str(request.grant_type)
            raise UnsupportedGrantType(f"grant type {name} is not supported", field="grant_type")
        return pb.IssueTokenResponse(
            access_token=issued.access_token,
            token_type="Bearer",
            expires_in=issued.expires_in,
            scope=format_scope(issued.scopes),
        )
