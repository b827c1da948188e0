"""Helpers of the OAuth2 conformance tests (RFC 6749, 6750, 7009, 7636, 7662, 9700): a
server with the token endpoint's rate limits lifted, client registration, and one call
per protocol step (Authorize, token request, refresh, introspection, revocation)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import field_mask_pb2

from tests.harness.grpc_server import AppFactory, Credentials, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_info, error_reason
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application

pb = token_service_pb2

CC = pb.GRANT_TYPE_CLIENT_CREDENTIALS
AUTH_CODE = pb.GRANT_TYPE_AUTHORIZATION_CODE
REFRESH = pb.GRANT_TYPE_REFRESH_TOKEN
S256 = pb.CODE_CHALLENGE_METHOD_S256
PLAIN = pb.CODE_CHALLENGE_METHOD_PLAIN
UNSPECIFIED_METHOD = pb.CODE_CHALLENGE_METHOD_UNSPECIFIED
CONFIDENTIAL = client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL
PUBLIC = client_registry_pb2.CLIENT_TYPE_PUBLIC

REDIRECT_URI = "https://app.example/callback"
INACTIVE = pb.IntrospectTokenResponse(active=False)

# Every conformance test issues more tokens from 127.0.0.1 than the default per-IP limit
# of the token endpoint allows per minute; rate limiting has its own tests.
NO_RATE_LIMITS = {"token_per_ip": 0, "token_per_client": 0}


def challenge_s256(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(code_verifier))), written out independently of the server."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def new_verifier() -> str:
    """A fresh RFC 7636 code verifier (43 characters of base64url)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str  # "" for public clients
    redirect_uri: str


@dataclass(frozen=True)
class Flow:
    """An authorization request that was granted: the code and what redeems it."""

    client: Client
    code: str
    verifier: str  # "" when no PKCE challenge was sent
    redirect_uri: str
    response: pb.AuthorizeResponse


class OAuth:
    """One running server, an admin token, and a call per protocol step."""

    def __init__(
        self, app: Application, channel: grpc.aio.Channel, admin_token: str, sync: redis.Redis
    ) -> None:
        self.app = app
        self.channel = channel
        self.admin_token = admin_token
        self.sync = sync
        self.tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        self.registry = client_registry_pb2_grpc.ClientRegistryStub(channel)

    # -- clients -------------------------------------------------------------------------

    async def client(
        self,
        *,
        client_type: int = CONFIDENTIAL,
        grant_types: Sequence[int] = (AUTH_CODE, REFRESH),
        scopes: Sequence[str] = ("read", "write"),
        redirect_uris: Sequence[str] = (REDIRECT_URI,),
        audiences: Sequence[str] = (),
        access_token_ttl: int = 0,
    ) -> Client:
        response = await self.registry.CreateClient(
            client_registry_pb2.CreateClientRequest(
                client=client_registry_pb2.Client(
                    client_type=client_type,  # type: ignore[arg-type]
                    allowed_grant_types=list(grant_types),  # type: ignore[arg-type]
                    allowed_scopes=list(scopes),
                    redirect_uris=list(redirect_uris),
                    audiences=list(audiences),
                    access_token_ttl_seconds=access_token_ttl,
                )
            ),
            metadata=bearer(self.admin_token),
            timeout=5,
        )
        first_uri = redirect_uris[0] if redirect_uris else ""
        return Client(response.client.client_id, response.client_secret, first_uri)

    async def public_client(self, **options: Any) -> Client:
        return await self.client(client_type=PUBLIC, **options)

    async def update_client(self, client: client_registry_pb2.Client, *paths: str) -> None:
        await self.registry.UpdateClient(
            client_registry_pb2.UpdateClientRequest(
                client=client, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            metadata=bearer(self.admin_token),
            timeout=5,
        )

    async def caller_token(self, scopes: Sequence[str], scope: str = "") -> str:
        """An access token (client_credentials) of a new client with ``scopes``."""
        client = await self.client(grant_types=(CC,), scopes=scopes, redirect_uris=())
        return await self.client_credentials(client, scope=scope)

    # -- the authorization code grant ----------------------------------------------------

    async def authorize_request(
        self, request: pb.AuthorizeRequest, metadata: Any = None
    ) -> pb.AuthorizeResponse:
        if metadata is None:
            metadata = bearer(self.admin_token)
        return await self.tokens.Authorize(request, metadata=metadata, timeout=5)

    async def authorize(
        self,
        client: Client,
        *,
        redirect_uri: str | None = None,
        scope: str = "",
        subject: str = "alice",
        state: str = "",
        pkce: bool = True,
        verifier: str | None = None,
        challenge: str | None = None,
        method: int = S256,
        session_id: str = "",
    ) -> Flow:
        """Authorize with S256 PKCE by default; returns the code and its verifier."""
        if pkce and verifier is None:
            verifier = new_verifier()
        if pkce and challenge is None:
            assert verifier is not None
            challenge = challenge_s256(verifier) if method == S256 else verifier
        uri = client.redirect_uri if redirect_uri is None else redirect_uri
        response = await self.authorize_request(
            pb.AuthorizeRequest(
                client_id=client.client_id,
                redirect_uri=uri,
                scope=scope,
                subject=subject,
                state=state,
                code_challenge=challenge or "",
                code_challenge_method=method,  # type: ignore[arg-type]
                session_id=session_id,
            )
        )
        return Flow(client, response.code, verifier or "", uri, response)

    async def token_request(self, **fields: Any) -> pb.IssueTokenResponse:
        return await self.tokens.IssueToken(pb.IssueTokenRequest(**fields), timeout=5)

    async def redeem(
        self,
        flow: Flow,
        *,
        client: Client | None = None,
        client_secret: str | None = None,
        code: str | None = None,
        redirect_uri: str | None = None,
        verifier: str | None = None,
    ) -> pb.IssueTokenResponse:
        """The token request of RFC 6749 section 4.1.3; every part can be overridden."""
        client = client or flow.client
        return await self.token_request(
            grant_type=AUTH_CODE,
            client_id=client.client_id,
            client_secret=client.client_secret if client_secret is None else client_secret,
            code=flow.code if code is None else code,
            redirect_uri=flow.redirect_uri if redirect_uri is None else redirect_uri,
            code_verifier=flow.verifier if verifier is None else verifier,
        )

    async def code_flow(self, client: Client, **authorize: Any) -> pb.IssueTokenResponse:
        """Authorize and redeem: the tokens a user's sign-in gives the client."""
        return await self.redeem(await self.authorize(client, **authorize))

    async def refresh(
        self,
        client: Client,
        refresh_token: str,
        *,
        scope: str = "",
        client_secret: str | None = None,
    ) -> pb.IssueTokenResponse:
        return await self.token_request(
            grant_type=REFRESH,
            client_id=client.client_id,
            client_secret=client.client_secret if client_secret is None else client_secret,
            refresh_token=refresh_token,
            scope=scope,
        )

    async def client_credentials(self, client: Client, scope: str = "") -> str:
        return await issue_token(
            self.channel, Credentials(client.client_id, client.client_secret), scope
        )

    # -- introspection and revocation ----------------------------------------------------

    async def introspect(
        self, token: str, *, caller: str | None = None, hint: int = 0
    ) -> pb.IntrospectTokenResponse:
        """IntrospectToken as ``caller`` (an access token; the admin's by default)."""
        return await self.tokens.IntrospectToken(
            pb.IntrospectTokenRequest(token=token, token_type_hint=hint),  # type: ignore[arg-type]
            metadata=bearer(caller or self.admin_token),
            timeout=5,
        )

    async def is_active(self, token: str) -> bool:
        return (await self.introspect(token)).active

    async def revoke(
        self,
        token: str,
        *,
        client: Client | None = None,
        client_secret: str | None = None,
        caller: str | None = None,
        hint: int = 0,
    ) -> pb.RevokeTokenResponse:
        """RevokeToken authenticated by client credentials, or by ``caller``'s bearer."""
        request = pb.RevokeTokenRequest(token=token, token_type_hint=hint)  # type: ignore[arg-type]
        if client is not None:
            request.client_id = client.client_id
            request.client_secret = client.client_secret if client_secret is None else client_secret
        metadata = bearer(caller) if caller is not None else None
        return await self.tokens.RevokeToken(request, metadata=metadata, timeout=5)

    async def stats(self) -> pb.GetTokenStatsResponse:
        return await self.tokens.GetTokenStats(
            pb.GetTokenStatsRequest(), metadata=bearer(self.admin_token), timeout=5
        )


@asynccontextmanager
async def oauth_server(
    app_factory: AppFactory, valkey: RedisProcess, **auth: Any
) -> AsyncIterator[OAuth]:
    """A server on ``valkey`` with ``auth`` settings overrides and no token rate limits."""
    app = await app_factory(redis={"url": valkey.url}, auth=auth, rate_limit=NO_RATE_LIMITS)
    admin = await bootstrap_admin(app)
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        yield OAuth(app, channel, await issue_token(channel, admin), valkey.client())


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """The error an awaitable RPC fails with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def check(
    error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str, field: str | None = None
) -> None:
    """The error has gRPC ``code``, ErrorInfo ``reason`` and, if given, metadata field."""
    assert error.code() is code, (error.code(), error.details())
    assert error_reason(error) == reason, (reason, error.details())
    if field is not None:
        info = error_info(error)
        assert info is not None
        assert info.metadata.get("field") == field, (field, dict(info.metadata), error.details())


async def expect(
    call: Any, code: grpc.StatusCode, reason: str, field: str | None = None
) -> grpc.aio.AioRpcError:
    error = await failure(call)
    check(error, code, reason, field)
    return error


async def invalid_grant(call: Any, field: str | None = None) -> grpc.aio.AioRpcError:
    return await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT", field)


async def invalid_request(call: Any, field: str) -> grpc.aio.AioRpcError:
    return await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", field)


async def invalid_client(call: Any) -> grpc.aio.AioRpcError:
    return await expect(call, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


async def invalid_scope(call: Any) -> grpc.aio.AioRpcError:
    return await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE", "scope")
