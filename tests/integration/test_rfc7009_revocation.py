"""RFC 7009 conformance (token revocation) against a real server and a real Valkey: the
client authenticates (section 2.1) with its credentials or a bearer token; invalid,
unknown, already revoked and other clients' tokens all get the same success answer
(section 2.2) and nothing of another client's is revoked; revoking a refresh token also
revokes the access tokens of its grant; revoked tokens leave an ``auth:blacklist:<sha256>``
marker until their natural expiry."""

from __future__ import annotations

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
    invalid_client,
    invalid_grant,
    invalid_request,
    oauth_server,
    pb,
)
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential

ACCESS = pb.TOKEN_KIND_ACCESS_TOKEN
REFRESH_KIND = pb.TOKEN_KIND_REFRESH_TOKEN
SUCCESS = pb.RevokeTokenResponse()


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


def _assert_blacklisted(oauth: OAuth, token: str, expires_at: int) -> None:
    """A marker that lasts as long as the token would have, and no longer."""
    key = f"auth:blacklist:{digest(token)}"
    ttl = oauth.sync.ttl(key)
    assert ttl > 0, (key, ttl)
    assert ttl <= expires_at - int(time.time()) + 1, (ttl, expires_at)
    assert not oauth.sync.exists(f"auth:access_token:{digest(token)}")
    assert not oauth.sync.exists(f"auth:refresh_token:{digest(token)}")


async def test_revoke_with_client_credentials(oauth: OAuth) -> None:
    client = await oauth.client()
    issued = await oauth.code_flow(client)
    expires_at = (await oauth.introspect(issued.access_token)).exp
    revoked_before = (await oauth.stats()).access_tokens_revoked_total

    assert await oauth.revoke(issued.access_token, client=client) == SUCCESS

    assert await oauth.introspect(issued.access_token) == INACTIVE
    _assert_blacklisted(oauth, issued.access_token, expires_at)
    assert 890 <= oauth.sync.ttl(f"auth:blacklist:{digest(issued.access_token)}") <= 900
    # A revoked access token no longer authenticates anything.
    await expect(
        oauth.introspect(issued.refresh_token, caller=issued.access_token),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    assert (await oauth.stats()).access_tokens_revoked_total == revoked_before + 1
    # Revoking it again, with either hint, is a silent success.
    for hint in (0, ACCESS, REFRESH_KIND):
        assert await oauth.revoke(issued.access_token, client=client, hint=hint) == SUCCESS
    assert (await oauth.stats()).access_tokens_revoked_total == revoked_before + 1

    # Public clients identify themselves by client_id alone.
    public = await oauth.public_client()
    mine = await oauth.code_flow(public)
    assert await oauth.revoke(mine.access_token, client=public) == SUCCESS
    assert await oauth.introspect(mine.access_token) == INACTIVE


async def test_revoke_with_a_bearer_token(oauth: OAuth) -> None:
    service = await oauth.client(grant_types=(CC,), scopes=("read",), redirect_uris=())
    caller = await oauth.client_credentials(service)
    doomed = await oauth.client_credentials(service)

    assert await oauth.revoke(doomed, caller=caller) == SUCCESS

    assert await oauth.introspect(doomed) == INACTIVE
    assert await oauth.is_active(caller)
    # The client behind the bearer token is the one that may revoke: another client's
    # token is left alone.
    client = await oauth.client()
    foreign = await oauth.code_flow(client)
    assert await oauth.revoke(foreign.access_token, caller=caller) == SUCCESS
    assert await oauth.is_active(foreign.access_token)
    # A client may revoke the very token it authenticates with (e.g. at logout).
    assert await oauth.revoke(caller, caller=caller) == SUCCESS
    assert await oauth.introspect(caller) == INACTIVE


async def test_unknown_revoked_and_malformed_tokens_succeed_silently(oauth: OAuth) -> None:
    client = await oauth.client()
    issued = await oauth.code_flow(client)
    await oauth.revoke(issued.access_token, client=client)
    flow = await oauth.authorize(client)
    keys_before = sorted(oauth.sync.scan_iter("*"))
    stats_before = await oauth.stats()

    for token in (
        new_credential(CredentialKind.ACCESS_TOKEN),
        new_credential(CredentialKind.REFRESH_TOKEN),
        issued.access_token,  # already revoked
        "garbage",
        issued.refresh_token[:-1],
        "x" * 512,
        flow.code,
        client.client_secret,
    ):
        for hint in (0, ACCESS, REFRESH_KIND):
            assert await oauth.revoke(token, client=client, hint=hint) == SUCCESS

    assert sorted(oauth.sync.scan_iter("*")) == keys_before
    stats_after = await oauth.stats()
    assert stats_after.access_tokens_revoked_total == stats_before.access_tokens_revoked_total
    assert stats_after.refresh_tokens_revoked_total == stats_before.refresh_tokens_revoked_total
    # The token parameter itself is required (section 2.1).
    await invalid_request(oauth.revoke("", client=client), "token")
    # The code was not touched by being "revoked".
    assert (await oauth.redeem(flow)).access_token


async def test_another_clients_token_is_not_revoked_and_nothing_leaks(oauth: OAuth) -> None:
    owner = await oauth.client()
    other = await oauth.client()
    issued = await oauth.code_flow(owner)
    unknown = new_credential(CredentialKind.REFRESH_TOKEN)

    answers = []
    for token in (issued.access_token, issued.refresh_token, unknown):
        call = oauth.tokens.RevokeToken(
            pb.RevokeTokenRequest(
                token=token, client_id=other.client_id, client_secret=other.client_secret
            ),
            timeout=5,
        )
        answers.append((await call, await call.trailing_metadata()))

    # The same answer for a foreign token as for an unknown one.
    assert [response for response, _ in answers] == [SUCCESS] * 3
    assert all(not list(trailers or ()) for _, trailers in answers)
    assert await oauth.is_active(issued.access_token)
    assert await oauth.is_active(issued.refresh_token)
    assert (await oauth.refresh(owner, issued.refresh_token)).access_token


async def test_revoking_a_refresh_token_revokes_its_grant(oauth: OAuth) -> None:
    client = await oauth.client()
    first = await oauth.code_flow(client)
    second = await oauth.refresh(client, first.refresh_token)
    unrelated = await oauth.code_flow(client)
    expiries = {
        token: (await oauth.introspect(token)).exp
        for token in (first.access_token, second.access_token, second.refresh_token)
    }

    # The hint is only an optimisation: a wrong one still finds the token.
    assert await oauth.revoke(second.refresh_token, client=client, hint=ACCESS) == SUCCESS

    for token, expires_at in expiries.items():
        assert await oauth.introspect(token) == INACTIVE
        _assert_blacklisted(oauth, token, expires_at)
    refresh_ttl = oauth.sync.ttl(f"auth:blacklist:{digest(second.refresh_token)}")
    assert 604790 <= refresh_ttl <= 604800
    await invalid_grant(oauth.refresh(client, second.refresh_token))
    assert not oauth.sync.exists(f"auth:family:{first.grant_id}")
    # Other grants of the client are untouched.
    assert await oauth.is_active(unrelated.access_token)
    assert await oauth.is_active(unrelated.refresh_token)


async def test_client_authentication_errors(oauth: OAuth) -> None:
    client = await oauth.client()
    other = await oauth.client()
    public = await oauth.public_client()
    issued = await oauth.code_flow(client)

    for secret in ("", "wrong", other.client_secret):
        await invalid_client(oauth.revoke(issued.access_token, client=client, client_secret=secret))
    await invalid_client(
        oauth.revoke(issued.access_token, client=public, client_secret="tscs_anything")
    )
    unknown = type(client)("no-such-client", client.client_secret, "")
    await invalid_client(oauth.revoke(issued.access_token, client=unknown))
    # No credentials at all.
    await invalid_client(oauth.tokens.RevokeToken(pb.RevokeTokenRequest(token=issued.access_token)))
    # A bearer token that is not a valid access token is refused, not ignored.
    for value in ("garbage", new_credential(CredentialKind.ACCESS_TOKEN), issued.refresh_token):
        await expect(
            oauth.tokens.RevokeToken(
                pb.RevokeTokenRequest(token=issued.access_token), metadata=bearer(value)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )
    assert await oauth.is_active(issued.access_token)
