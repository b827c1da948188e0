"""RFC 6749 section 6 and RFC 9700 section 4.14.2 conformance: the refresh token grant
against a real server and a real Valkey. Every use rotates the refresh token; a rotated
token that comes back revokes its whole grant family (access and refresh tokens alike),
except once within the configured grace period, and even then one family never has two
live refresh tokens. Scope may be narrowed, never widened; public clients refresh without
a secret; a refresh token works only for the client it was issued to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest

from tests.harness.grpc_server import AppFactory
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import (
    AUTH_CODE,
    CC,
    INACTIVE,
    REFRESH,
    OAuth,
    expect,
    invalid_client,
    invalid_grant,
    invalid_request,
    invalid_scope,
    oauth_server,
)
from tokenservice.v1 import client_registry_pb2
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


def _live_refresh_tokens(oauth: OAuth, grant_id: str) -> set[str]:
    """Members of the grant family whose refresh token is stored and not rotated."""
    live = set()
    # (NEVER_DECODE: access tokens' members hold raw digest bytes.)
    raw = oauth.sync.execute_command("SMEMBERS", f"auth:family:{grant_id}", NEVER_DECODE=True)
    for member in cast("set[bytes]", raw):
        if member.startswith(b"r:"):
            state = oauth.sync.hget(f"auth:refresh_token:{member[2:].decode()}", "st")
            if state == "live":
                live.add(member[2:].decode())
    return live


async def test_every_refresh_rotates_the_refresh_token(oauth: OAuth) -> None:
    client = await oauth.client()
    first = await oauth.code_flow(client, scope="read write", subject="alice")

    second = await oauth.refresh(client, first.refresh_token)
    third = await oauth.refresh(client, second.refresh_token)

    for previous, response in ((first, second), (second, third)):
        assert response.refresh_token.startswith("tsrt_")
        assert response.refresh_token != previous.refresh_token
        assert response.access_token != previous.access_token
        assert response.grant_id == first.grant_id  # one family across rotations
        assert response.token_type == "Bearer"
        assert response.expires_in == 900
        assert response.refresh_token_expires_in == 604800
        assert response.scope == "read write"
    assert _live_refresh_tokens(oauth, first.grant_id) == {digest(third.refresh_token)}
    # The rotated tokens are no longer active, their successors are.
    for rotated in (first.refresh_token, second.refresh_token):
        assert await oauth.introspect(rotated) == INACTIVE
    fresh = await oauth.introspect(third.access_token)
    assert fresh.active
    assert fresh.sub == "alice"
    assert await oauth.is_active(third.refresh_token)


async def test_reuse_of_a_rotated_token_revokes_the_whole_family(oauth: OAuth) -> None:
    client = await oauth.client()
    first = await oauth.code_flow(client)
    second = await oauth.refresh(client, first.refresh_token)
    third = await oauth.refresh(client, second.refresh_token)
    unrelated = await oauth.code_flow(client)

    # An attacker (or a confused client) presents a token that was already rotated.
    await invalid_grant(oauth.refresh(client, first.refresh_token), "refresh_token")

    # The newest tokens die with it: the legitimate holder must sign in again.
    for response in (first, second, third):
        assert await oauth.introspect(response.access_token) == INACTIVE
        assert await oauth.introspect(response.refresh_token) == INACTIVE
    await invalid_grant(oauth.refresh(client, third.refresh_token))
    await invalid_grant(oauth.refresh(client, second.refresh_token))
    assert not oauth.sync.exists(f"auth:family:{first.grant_id}")
    for token in (third.access_token, third.refresh_token):
        assert oauth.sync.exists(f"auth:blacklist:{digest(token)}")
    assert (await oauth.stats()).refresh_token_reuse_total == 1
    # Other grants of the same client and user are untouched.
    assert await oauth.is_active(unrelated.access_token)
    assert (await oauth.refresh(client, unrelated.refresh_token)).access_token


async def test_grace_period_allows_one_retry_of_a_just_rotated_token(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    async with oauth_server(app_factory, valkey, refresh_reuse_grace=1.0) as oauth:
        client = await oauth.client()
        first = await oauth.code_flow(client)
        lost = await oauth.refresh(client, first.refresh_token)  # the response never arrived

        retried = await oauth.refresh(client, first.refresh_token)

        assert retried.grant_id == first.grant_id
        assert retried.refresh_token != lost.refresh_token
        # The pair issued at the first rotation is revoked: one live refresh token only.
        assert await oauth.introspect(lost.access_token) == INACTIVE
        assert await oauth.introspect(lost.refresh_token) == INACTIVE
        assert _live_refresh_tokens(oauth, first.grant_id) == {digest(retried.refresh_token)}
        await invalid_grant(oauth.refresh(client, lost.refresh_token))
        assert await oauth.is_active(retried.access_token)

        # A second reuse, even within the grace period, revokes the family.
        await invalid_grant(oauth.refresh(client, first.refresh_token))
        assert await oauth.introspect(retried.access_token) == INACTIVE
        await invalid_grant(oauth.refresh(client, retried.refresh_token))
        assert (await oauth.stats()).refresh_token_reuse_total == 1

        # Once the successor was used the response evidently arrived: a retry of its
        # predecessor is reuse, not a lost response.
        start = await oauth.code_flow(client)
        used = await oauth.refresh(client, start.refresh_token)
        newest = await oauth.refresh(client, used.refresh_token)
        await invalid_grant(oauth.refresh(client, start.refresh_token))
        assert await oauth.introspect(newest.refresh_token) == INACTIVE
        assert await oauth.introspect(newest.access_token) == INACTIVE

        # After the grace period, a reuse revokes the family.
        late = await oauth.code_flow(client)
        rotated = await oauth.refresh(client, late.refresh_token)
        await asyncio.sleep(1.1)
        await invalid_grant(oauth.refresh(client, late.refresh_token))
        assert await oauth.introspect(rotated.access_token) == INACTIVE
        await invalid_grant(oauth.refresh(client, rotated.refresh_token))
        assert (await oauth.stats()).refresh_token_reuse_total == 3


async def test_without_grace_an_immediate_retry_is_reuse(oauth: OAuth) -> None:
    client = await oauth.client()
    first = await oauth.code_flow(client)
    lost = await oauth.refresh(client, first.refresh_token)
    await invalid_grant(oauth.refresh(client, first.refresh_token))
    assert await oauth.introspect(lost.refresh_token) == INACTIVE


async def test_scope_may_be_narrowed_never_widened(oauth: OAuth) -> None:
    client = await oauth.client(scopes=("read", "write", "admin"))
    first = await oauth.code_flow(client, scope="read write")

    narrowed = await oauth.refresh(client, first.refresh_token, scope="read")
    assert narrowed.scope == "read"
    assert (await oauth.introspect(narrowed.access_token)).scope == "read"
    # The refresh token still carries the original grant ...
    assert (await oauth.introspect(narrowed.refresh_token)).scope == "read write"
    # ... so a later refresh may ask for the original scope again, or omit it.
    again = await oauth.refresh(client, narrowed.refresh_token, scope="write read")
    assert again.scope == "read write"
    assert (await oauth.introspect(again.access_token)).scope == "read write"
    omitted = await oauth.refresh(client, again.refresh_token)
    assert omitted.scope == "read write"

    # Never wider than the original grant, even within the client's scopes; a refused
    # request leaves the refresh token usable.
    for scope in ("admin", "read admin", "read write admin", "READ", "read  write"):
        await invalid_scope(oauth.refresh(client, omitted.refresh_token, scope=scope))
    assert (await oauth.refresh(client, omitted.refresh_token, scope="write")).scope == "write"


async def test_public_client_refreshes_without_a_secret(oauth: OAuth) -> None:
    client = await oauth.public_client()
    first = await oauth.code_flow(client)

    second = await oauth.refresh(client, first.refresh_token)
    assert second.access_token
    await invalid_client(oauth.refresh(client, second.refresh_token, client_secret="tscs_x"))
    assert (await oauth.refresh(client, second.refresh_token)).access_token


async def test_client_authentication_and_binding(oauth: OAuth) -> None:
    client = await oauth.client()
    other = await oauth.client()
    first = await oauth.code_flow(client)

    for secret in ("", "wrong", other.client_secret):
        await invalid_client(oauth.refresh(client, first.refresh_token, client_secret=secret))
    # Another client (authenticated as itself) cannot use the token, nor burn it.
    await invalid_grant(oauth.refresh(other, first.refresh_token), "refresh_token")
    public = await oauth.public_client()
    await invalid_grant(oauth.refresh(public, first.refresh_token))
    assert await oauth.is_active(first.access_token)
    second = await oauth.refresh(client, first.refresh_token)

    # Missing, malformed and unknown refresh tokens; an access token is not one.
    await invalid_request(oauth.refresh(client, ""), "refresh_token")
    for token in (
        "not-a-token",
        second.refresh_token[:-1] + ("A" if second.refresh_token[-1] != "A" else "B"),
        second.access_token,
        new_credential(CredentialKind.REFRESH_TOKEN),
    ):
        await invalid_grant(oauth.refresh(client, token), "refresh_token")
    assert (await oauth.refresh(client, second.refresh_token)).access_token


async def test_client_without_the_refresh_token_grant(oauth: OAuth) -> None:
    client = await oauth.client(grant_types=(AUTH_CODE, REFRESH))
    first = await oauth.code_flow(client)
    await oauth.update_client(
        client_registry_pb2.Client(client_id=client.client_id, allowed_grant_types=[AUTH_CODE]),
        "allowed_grant_types",
    )
    await expect(
        oauth.refresh(client, first.refresh_token),
        grpc.StatusCode.PERMISSION_DENIED,
        "UNAUTHORIZED_CLIENT",
    )


async def test_client_credentials_never_issue_a_refresh_token(oauth: OAuth) -> None:
    # RFC 6749 section 4.4.3, even for a client that may use the refresh_token grant.
    client = await oauth.client(grant_types=(CC, REFRESH), redirect_uris=())
    response = await oauth.token_request(
        grant_type=CC, client_id=client.client_id, client_secret=client.client_secret
    )
    assert response.access_token
    assert response.refresh_token == ""
    assert response.refresh_token_expires_in == 0
    assert not list(oauth.sync.scan_iter("auth:refresh_token:*"))
