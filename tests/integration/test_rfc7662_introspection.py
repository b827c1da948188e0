"""RFC 7662 conformance (token introspection) against a real server and a real Valkey: the
metadata of an active token (section 2.2), refresh tokens, and the rule that anything
inactive, unknown or not visible to the caller answers only ``active: false``. Callers
authenticate (section 2.1) with a bearer token: scope tokenservice.introspect sees every
token, any other client only its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import (
    CC,
    INACTIVE,
    OAuth,
    expect,
    oauth_server,
    pb,
)
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential

ACCESS = pb.TOKEN_KIND_ACCESS_TOKEN
REFRESH_KIND = pb.TOKEN_KIND_REFRESH_TOKEN


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


def _flip(token: str) -> str:
    return token[:20] + ("A" if token[20] != "A" else "B") + token[21:]


async def test_active_access_and_refresh_tokens(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    async with oauth_server(app_factory, valkey, issuer="https://issuer.example/") as oauth:
        client = await oauth.client(
            scopes=("read", "write"), audiences=("https://api.example", "billing")
        )
        started = int(time.time())
        issued = await oauth.code_flow(client, scope="write read", subject="alice@example.com")

        access = await oauth.introspect(issued.access_token)
        assert access.active is True
        assert access.scope == "read write"
        assert access.client_id == client.client_id
        assert access.sub == "alice@example.com"
        assert access.username == "alice@example.com"
        assert access.token_type == "Bearer"
        assert access.token_kind == ACCESS
        assert started <= access.iat <= int(time.time())
        assert access.exp == access.iat + 900
        assert access.nbf == access.iat
        assert sorted(access.aud) == ["billing", "https://api.example"]
        assert access.iss == "https://issuer.example/"
        assert access.jti
        assert access.jti not in issued.access_token
        assert access.session_id == ""
        # The same answer every time, whatever the (optional) hint says.
        for hint in (ACCESS, REFRESH_KIND):
            assert await oauth.introspect(issued.access_token, hint=hint) == access

        refresh = await oauth.introspect(issued.refresh_token)
        assert refresh.active is True
        assert refresh.token_kind == REFRESH_KIND
        assert refresh.token_type == ""  # not an access token type (RFC 6749 section 7.1)
        assert refresh.scope == "read write"
        assert refresh.client_id == client.client_id
        assert refresh.sub == "alice@example.com"
        assert refresh.exp == refresh.iat + 604800
        assert refresh.nbf == refresh.iat
        assert refresh.iss == "https://issuer.example/"
        assert refresh.jti
        assert refresh.jti != access.jti
        assert await oauth.introspect(issued.refresh_token, hint=ACCESS) == refresh

        # A client_credentials token's subject is its client (RFC 9068 section 2.2).
        service = await oauth.client(grant_types=(CC,), scopes=("read",), redirect_uris=())
        own = await oauth.introspect(await oauth.client_credentials(service))
        assert own.active
        assert own.sub == service.client_id
        assert own.username == ""
        assert own.aud == []
        assert own.token_kind == ACCESS


async def test_inactive_tokens_answer_only_active_false(oauth: OAuth) -> None:
    client = await oauth.client()
    short = await oauth.client(access_token_ttl=2)
    expiring = await oauth.code_flow(short)
    # Checked at once: expiry is the issue second rounded down plus the TTL, so a token
    # may live up to a second less than its TTL, never more.
    assert await oauth.is_active(expiring.access_token)
    # One expired record is kept in Redis past its expiry: the server must check the
    # expiry itself, not rely on Redis having deleted the key.
    kept = await oauth.code_flow(short)
    issued_at = time.monotonic()  # both short tokens exist by now
    assert oauth.sync.persist(f"auth:access_token:{digest(kept.access_token)}")

    revoked = await oauth.code_flow(client)
    await oauth.revoke(revoked.access_token, client=client)
    rotated = await oauth.code_flow(client)
    successor = await oauth.refresh(client, rotated.refresh_token)
    flow = await oauth.authorize(client)

    inactive = [
        new_credential(CredentialKind.ACCESS_TOKEN),  # unknown
        new_credential(CredentialKind.REFRESH_TOKEN),
        revoked.access_token,
        rotated.refresh_token,  # a rotated refresh token is no longer usable
        # malformed, or not a token at all
        "",
        "garbage",
        _flip(successor.access_token),
        successor.access_token[:-1],
        successor.access_token + "x",
        "x" * 512,
        flow.code,
        client.client_secret,
    ]
    for token in inactive:
        assert await oauth.introspect(token) == INACTIVE, token
        for hint in (ACCESS, REFRESH_KIND):
            assert await oauth.introspect(token, hint=hint) == INACTIVE

    # Expired tokens (issued with a 2 s TTL; 2.1 s covers the latest possible expiry).
    await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - issued_at)))
    for token in (expiring.access_token, kept.access_token):
        assert await oauth.introspect(token) == INACTIVE
    # The live ones stay active.
    assert await oauth.is_active(successor.access_token)
    assert await oauth.is_active(successor.refresh_token)
    assert await oauth.is_active(expiring.refresh_token)


async def test_callers_without_the_introspect_scope_see_only_their_own_tokens(
    oauth: OAuth,
) -> None:
    app = await oauth.client()
    other = await oauth.client()
    mine = await oauth.code_flow(app, subject="alice")
    theirs = await oauth.code_flow(other, subject="alice")
    # The client's own access token (from the user's sign-in) authenticates it.
    caller = mine.access_token

    own_refresh = await oauth.introspect(mine.refresh_token, caller=caller)
    assert own_refresh.active
    assert own_refresh.token_kind == REFRESH_KIND
    assert (await oauth.introspect(caller, caller=caller)).active
    for token in (theirs.access_token, theirs.refresh_token):
        assert await oauth.introspect(token, caller=caller) == INACTIVE
        # Not a matter of the token: with the introspect scope it is active.
        assert await oauth.is_active(token)

    # A token of the admin client narrowed below tokenservice.introspect sees only the
    # admin client's own tokens.
    service = await oauth.client(
        grant_types=(CC,), scopes=("tokenservice.introspect", "read"), redirect_uris=()
    )
    narrowed = await oauth.client_credentials(service, scope="read")
    privileged = await oauth.client_credentials(service)
    assert await oauth.introspect(mine.access_token, caller=narrowed) == INACTIVE
    assert (await oauth.introspect(privileged, caller=narrowed)).active
    assert (await oauth.introspect(mine.access_token, caller=privileged)).active


async def test_caller_must_authenticate(oauth: OAuth) -> None:
    client = await oauth.client()
    issued = await oauth.code_flow(client)
    revoked = await oauth.code_flow(client)
    await oauth.revoke(revoked.access_token, client=client)
    request = pb.IntrospectTokenRequest(token=issued.access_token)

    await expect(
        oauth.tokens.IntrospectToken(request, timeout=5),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    for metadata in (
        bearer("garbage"),
        bearer(new_credential(CredentialKind.ACCESS_TOKEN)),
        bearer(_flip(oauth.admin_token)),
        bearer(revoked.access_token),
        bearer(issued.refresh_token),  # a refresh token is not an access token
        (("authorization", f"Basic {oauth.admin_token}"),),
        (("authorization", "Bearer"),),
    ):
        await expect(
            oauth.tokens.IntrospectToken(request, metadata=metadata, timeout=5),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )


async def test_introspections_are_counted(oauth: OAuth) -> None:
    client = await oauth.client()
    issued = await oauth.code_flow(client)
    before = (await oauth.stats()).introspections_total
    stored_before = int(oauth.sync.hget("auth_stats", "introspections") or 0)
    assert before == stored_before

    answers = [
        await oauth.introspect(token)
        for token in (issued.access_token, issued.refresh_token, "unknown", issued.access_token)
    ]
    assert [answer.active for answer in answers] == [True, True, False, True]

    # GetTokenStats adds this replica's buffered counts; auth_stats has them once flushed.
    assert (await oauth.stats()).introspections_total == before + 4
    assert int(oauth.sync.hget("auth_stats", "introspections") or 0) == stored_before
    assert oauth.app.components is not None
    await oauth.app.components.check_stats.flush()
    assert int(oauth.sync.hget("auth_stats", "introspections") or 0) == stored_before + 4
    assert (await oauth.stats()).introspections_total == before + 4
