"""RFC 6750 conformance for access tokens presented in RPC metadata
(``authorization: Bearer <token>``, the gRPC form of section 2.1), as far as it goes beyond
tests/integration/test_caller_authorization.py (header syntax, schemes, expiry, admin
RPCs): tokens from the authorization code and refresh grants authenticate like any other
access token; a token revoked by RevokeToken, by refresh-token reuse or by a second
redemption of its code is refused at once; refresh tokens and codes are never bearer
tokens; the TokenService RPCs answer a missing scope with PERMISSION_DENIED naming it
(section 3.1 insufficient_scope) and bad tokens with INVALID_TOKEN (invalid_token)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import (
    REDIRECT_URI,
    OAuth,
    expect,
    invalid_grant,
    oauth_server,
    pb,
)


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


async def _invalid_token(oauth: OAuth, token: str) -> None:
    """The token is refused as a bearer token on a TokenService RPC."""
    await expect(
        oauth.introspect(oauth.admin_token, caller=token),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )


async def test_tokens_of_user_grants_are_bearer_tokens_until_revoked(oauth: OAuth) -> None:
    client = await oauth.client(scopes=("tokenservice.introspect", "read"))
    issued = await oauth.code_flow(client, subject="alice")
    refreshed = await oauth.refresh(client, issued.refresh_token)

    # Access tokens of the user's grant authenticate the client, with the grant's scope.
    for token in (issued.access_token, refreshed.access_token):
        assert (await oauth.introspect(oauth.admin_token, caller=token)).active
    narrowed = await oauth.refresh(client, refreshed.refresh_token, scope="read")
    assert await oauth.introspect(oauth.admin_token, caller=narrowed.access_token) == (
        pb.IntrospectTokenResponse(active=False)  # without the introspect scope: own only
    )

    # Neither a live refresh token nor an authorization code is an access token.
    await _invalid_token(oauth, narrowed.refresh_token)
    await _invalid_token(oauth, (await oauth.authorize(client)).code)

    # Revoked with RFC 7009: refused on the very next call.
    await oauth.revoke(narrowed.access_token, client=client)
    await _invalid_token(oauth, narrowed.access_token)

    # Revoked with the whole family, because a rotated refresh token came back.
    await invalid_grant(oauth.refresh(client, issued.refresh_token))
    for token in (issued.access_token, refreshed.access_token):
        await _invalid_token(oauth, token)

    # Revoked because the code they came from was redeemed a second time.
    flow = await oauth.authorize(client)
    redeemed = await oauth.redeem(flow)
    assert (await oauth.introspect(oauth.admin_token, caller=redeemed.access_token)).active
    await invalid_grant(oauth.redeem(flow))
    await _invalid_token(oauth, redeemed.access_token)


async def test_missing_scope_is_permission_denied_naming_the_scope(oauth: OAuth) -> None:
    client = await oauth.client()
    token = await oauth.caller_token(("read", "tokenservice.introspect"))
    metadata = bearer(token)
    calls: list[tuple[str, Any]] = [
        (
            "tokenservice.authorize",
            oauth.tokens.Authorize(
                pb.AuthorizeRequest(
                    client_id=client.client_id, redirect_uri=REDIRECT_URI, subject="alice"
                ),
                metadata=metadata,
                timeout=5,
            ),
        ),
        (
            "tokenservice.authorize",
            oauth.tokens.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(subject="alice", client_id=client.client_id)
                ),
                metadata=metadata,
                timeout=5,
            ),
        ),
        (
            "tokenservice.admin",
            oauth.tokens.RevokeTokens(
                pb.RevokeTokensRequest(subject="alice"), metadata=metadata, timeout=5
            ),
        ),
        (
            "tokenservice.admin",
            oauth.tokens.GetTokenStats(pb.GetTokenStatsRequest(), metadata=metadata, timeout=5),
        ),
    ]
    for scope, call in calls:
        error = await expect(call, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        assert scope in str(error.details())
    # The same token is good for what its scope allows.
    assert (await oauth.introspect(oauth.admin_token, caller=token)).active


async def test_only_the_authorization_metadata_carries_the_token(oauth: OAuth) -> None:
    request = pb.GetTokenStatsRequest()
    # Section 2.2/2.3 (form body, URI query) have no gRPC counterpart: a token under any
    # other metadata key is no credential at all.
    for key in ("access_token", "x-access-token", "bearer"):
        await expect(
            oauth.tokens.GetTokenStats(request, metadata=((key, oauth.admin_token),), timeout=5),
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
    stats = await oauth.tokens.GetTokenStats(request, metadata=bearer(oauth.admin_token))
    assert stats.access_tokens_issued_total >= 1
