"""RFC 6749 section 4.1 conformance: the authorization code grant against a real server and
a real Valkey. Authorize (the validated authorization request of section 4.1.1, with the
redirect URI rules of RFC 9700 section 2.1 and RFC 8252 section 7.3) and the token request
of section 4.1.3: a code bound to its client and redirect URI, short-lived, single use,
and a second redemption revoking every token issued from it (section 4.1.2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import (
    AUTH_CODE,
    CC,
    INACTIVE,
    REDIRECT_URI,
    OAuth,
    expect,
    invalid_client,
    invalid_grant,
    invalid_request,
    invalid_scope,
    oauth_server,
    pb,
)
from tokenservice.v1 import client_registry_pb2
from tokenservice_server.domain.credentials import (
    CredentialKind,
    digest,
    is_well_formed,
    new_credential,
)
from tokenservice_server.storage import keys


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


# -- Authorize: the authorization response (section 4.1.2) --------------------------------


async def test_authorize_returns_a_single_use_code_stored_only_by_hash(oauth: OAuth) -> None:
    client = await oauth.client()
    issued_before = int(oauth.sync.hget("auth_stats", "authorization_codes_issued") or 0)

    flow = await oauth.authorize(client, scope="read", state="xyz/ä 1")

    code = flow.code
    assert code.startswith("tsac_")
    assert len(code) == 54  # 256 random bits, base64url, plus prefix and checksum
    assert is_well_formed(code, CredentialKind.AUTHORIZATION_CODE)
    assert flow.response.expires_in == 600
    assert flow.response.state == "xyz/ä 1"  # returned unchanged
    key = f"auth:code:{digest(code)}"
    assert 595 <= oauth.sync.ttl(key) <= 600
    stored = oauth.sync.hgetall(key)
    assert stored["c"] == client.client_id
    assert stored["r"] == REDIRECT_URI
    assert stored["u"] == "alice"
    assert code not in str(stored)
    assert not any(code in name for name in oauth.sync.scan_iter("*"))
    after = int(oauth.sync.hget("auth_stats", "authorization_codes_issued") or 0)
    assert after == issued_before + 1

    # Every code is new, and without a state none is echoed.
    other = await oauth.authorize(client)
    assert other.code != code
    assert other.response.state == ""


async def test_redirect_uri_must_match_exactly_except_a_loopback_port(oauth: OAuth) -> None:
    client = await oauth.client(redirect_uris=(REDIRECT_URI, "https://app.example/other?tenant=1"))
    for uri in (REDIRECT_URI, "https://app.example/other?tenant=1"):
        assert (await oauth.authorize(client, redirect_uri=uri)).code

    refused = [
        "https://app.example/callback/extra",  # an extra path segment
        "https://app.example/callback?next=/admin",  # an extra query
        "https://app.example/callback/",
        "https://app.example/Callback",
        "https://app.example/callback#fragment",
        "https://app.example:443/callback",  # the same resource, not the same string
        "https://app.example:8443/callback",  # the port of a non-loopback URI is fixed
        "http://app.example/callback",
        "https://evil.example/callback",
        "https://app.example.evil.example/callback",
        "https://app.example/other",  # the registered query is part of the URI
        "https://app.example/other?tenant=2",
        "https://app.example/other?tenant=1&x=1",
    ]
    for uri in refused:
        await invalid_request(oauth.authorize(client, redirect_uri=uri), "redirect_uri")
    await invalid_request(oauth.authorize(client, redirect_uri=""), "redirect_uri")

    # RFC 8252 section 7.3: native apps listen on an ephemeral loopback port.
    client = await oauth.public_client(
        redirect_uris=("http://127.0.0.1:8080/oauth/cb", "http://[::1]/cb")
    )
    for uri in (
        "http://127.0.0.1:8080/oauth/cb",
        "http://127.0.0.1:51234/oauth/cb",
        "http://127.0.0.1/oauth/cb",
        "http://[::1]:60123/cb",
    ):
        flow = await oauth.authorize(client, redirect_uri=uri)
        # The token request must repeat the URI the code was issued for, port included.
        other_port = uri.replace(":51234", ":51235") if ":51234" in uri else None
        if other_port is not None:
            await invalid_grant(oauth.redeem(flow, redirect_uri=other_port))
        assert (await oauth.redeem(flow)).access_token

    for uri in (
        "http://127.0.0.1:51234/oauth/cb/extra",  # the path must match
        "http://127.0.0.1:51234/oauth/CB",
        "http://127.0.0.1:51234/oauth/cb?x=1",  # and the query
        "http://127.0.0.1:51234/oauth/cb#x",  # no fragment (section 3.1.2)
        "http://user@127.0.0.1:51234/oauth/cb",  # no user information
        "http://127.0.0.1:port/oauth/cb",  # a malformed port
        "http://127.0.0.2:51234/oauth/cb",  # the host must match
        "http://localhost:51234/oauth/cb",
        "https://127.0.0.1:51234/oauth/cb",  # the scheme must match
        "http://[::1]:60123/cb/x",
    ):
        await invalid_request(oauth.authorize(client, redirect_uri=uri), "redirect_uri")


async def test_authorize_request_errors(oauth: OAuth) -> None:
    client = await oauth.client(scopes=("read", "write", "profile"))

    assert (await oauth.code_flow(client, scope="write read")).scope == "read write"
    # Omitted: every scope the client may use.
    assert (await oauth.code_flow(client)).scope == "profile read write"

    for scope in ("admin", "read admin", "READ", "tokenservice.admin", "read  write", "read\t"):
        await invalid_scope(oauth.authorize(client, scope=scope))

    cc_only = await oauth.client(grant_types=(CC,), redirect_uris=())
    await expect(
        oauth.authorize(cc_only, redirect_uri=REDIRECT_URI),
        grpc.StatusCode.PERMISSION_DENIED,
        "UNAUTHORIZED_CLIENT",
    )
    client = await oauth.client()
    unknown = type(client)("no-such-client", "", REDIRECT_URI)
    await invalid_request(oauth.authorize(unknown), "client_id")
    await invalid_request(oauth.authorize(type(client)("", "", REDIRECT_URI)), "client_id")
    for subject in ("", "two words", "x" * 257):
        await invalid_request(oauth.authorize(client, subject=subject), "subject")

    # The caller is the login front end: it needs scope tokenservice.authorize.
    request = pb.AuthorizeRequest(
        client_id=client.client_id, redirect_uri=REDIRECT_URI, subject="alice"
    )
    unprivileged = await oauth.caller_token(("read", "tokenservice.introspect"))
    error = await expect(
        oauth.authorize_request(request, bearer(unprivileged)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    assert "tokenservice.authorize" in str(error.details())
    await expect(
        oauth.authorize_request(request, ()), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )
    # The front end's token carries the scope.
    front_end = await oauth.caller_token(("tokenservice.authorize",))
    assert (await oauth.authorize_request(request, bearer(front_end))).code


# -- the token request (section 4.1.3) and response (section 5.1) -------------------------


async def test_token_response(oauth: OAuth) -> None:
    client = await oauth.client(scopes=("read", "write"))
    started = int(time.time())

    response = await oauth.code_flow(client, scope="read", subject="alice@example.com")

    assert response.access_token.startswith("tsat_")
    assert is_well_formed(response.access_token, CredentialKind.ACCESS_TOKEN)
    assert response.token_type == "Bearer"
    assert response.expires_in == 900
    assert response.refresh_token.startswith("tsrt_")
    assert len(response.refresh_token) == 54
    assert is_well_formed(response.refresh_token, CredentialKind.REFRESH_TOKEN)
    assert response.refresh_token_expires_in == 604800
    assert response.scope == "read"
    assert len(response.grant_id) >= 16
    assert response.session_id == ""

    access = oauth.sync.hgetall(f"auth:access_token:{digest(response.access_token)}")
    refresh = oauth.sync.hgetall(f"auth:refresh_token:{digest(response.refresh_token)}")
    for record in (access, refresh):
        assert record["c"] == client.client_id
        assert record["u"] == "alice@example.com"
        assert record["f"] == response.grant_id
        assert record["s"] == "read"
        assert started <= int(record["i"]) <= int(time.time())
    assert int(access["e"]) == int(access["i"]) + 900
    assert int(refresh["e"]) == int(refresh["i"]) + 604800
    refresh_ttl = oauth.sync.ttl(f"auth:refresh_token:{digest(response.refresh_token)}")
    assert 604790 <= refresh_ttl <= 604800
    raw = oauth.sync.execute_command(
        "SMEMBERS", f"auth:family:{response.grant_id}", NEVER_DECODE=True
    )
    assert raw == {
        keys.compact_access_member(digest(response.access_token)),
        f"r:{digest(response.refresh_token)}".encode(),
    }

    # The user's access token is what the client presents: it introspects as alice's.
    seen = await oauth.introspect(response.access_token)
    assert seen.active
    assert seen.sub == "alice@example.com"
    assert seen.client_id == client.client_id

    # A client registered without the refresh_token grant gets no refresh token.
    client = await oauth.client(grant_types=(AUTH_CODE,))
    refresh_keys = set(oauth.sync.scan_iter("auth:refresh_token:*"))
    response = await oauth.code_flow(client)
    assert response.access_token
    assert response.refresh_token == ""
    assert response.refresh_token_expires_in == 0
    assert response.grant_id
    assert set(oauth.sync.scan_iter("auth:refresh_token:*")) == refresh_keys


async def test_code_is_bound_to_its_client_and_redirect_uri(oauth: OAuth) -> None:
    owner = await oauth.client(redirect_uris=(REDIRECT_URI, "https://app.example/callback2"))
    thief = await oauth.client(redirect_uris=(REDIRECT_URI,))
    flow = await oauth.authorize(owner)

    await invalid_grant(oauth.redeem(flow, client=thief))
    # The redirect_uri of the token request must be the one the code was issued for.
    for uri in ("https://app.example/callback2", REDIRECT_URI + "/", REDIRECT_URI + "?a=b"):
        await invalid_grant(oauth.redeem(flow, redirect_uri=uri))
    await invalid_request(oauth.redeem(flow, redirect_uri=""), "redirect_uri")
    # Missing, malformed and unknown codes.
    await invalid_request(oauth.redeem(flow, code=""), "code")
    for code in (
        "not-a-code",
        flow.code[:-1] + ("A" if flow.code[-1] != "A" else "B"),  # checksum broken
        flow.code.replace("tsac_", "tsat_"),
        new_credential(CredentialKind.AUTHORIZATION_CODE),
    ):
        await invalid_grant(oauth.redeem(flow, code=code))
    # A foreign client or a wrong redirect URI cannot burn the code: its owner still
    # redeems it, once.
    assert (await oauth.redeem(flow)).access_token
    await invalid_grant(oauth.redeem(flow))


async def test_expired_code_is_invalid(app_factory: AppFactory, valkey: RedisProcess) -> None:
    async with oauth_server(app_factory, valkey, code_ttl=1) as oauth:
        client = await oauth.client()
        flow = await oauth.authorize(client)
        assert flow.response.expires_in == 1
        await asyncio.sleep(1.2)
        await invalid_grant(oauth.redeem(flow))
        assert oauth.sync.hget("auth_stats", "access_tokens_issued") == "1"  # the admin's


async def test_second_redemption_fails_and_revokes_every_token_of_the_code(
    oauth: OAuth,
) -> None:
    client = await oauth.client()
    flow = await oauth.authorize(client)
    first = await oauth.redeem(flow)
    # Tokens issued later from the same grant (by refreshing) descend from the code too.
    rotated = await oauth.refresh(client, first.refresh_token)
    assert await oauth.is_active(rotated.access_token)

    await invalid_grant(oauth.redeem(flow))

    for token in (first.access_token, rotated.access_token, rotated.refresh_token):
        assert await oauth.introspect(token) == INACTIVE
    await invalid_grant(oauth.refresh(client, rotated.refresh_token))
    assert oauth.sync.hget("auth_stats", "authorization_code_reuse") == "1"
    assert (await oauth.stats()).authorization_code_reuse_total == 1
    assert not oauth.sync.exists(f"auth:family:{first.grant_id}")
    for token in (first.access_token, rotated.access_token, rotated.refresh_token):
        assert oauth.sync.exists(f"auth:blacklist:{digest(token)}")

    # Still refused later; and other grants of the same client and user are untouched.
    other = await oauth.code_flow(client)
    await invalid_grant(oauth.redeem(flow))
    assert await oauth.is_active(other.access_token)
    assert await oauth.is_active(other.refresh_token)


async def test_client_authentication_at_the_token_request(oauth: OAuth) -> None:
    client = await oauth.client()
    other = await oauth.client()
    flow = await oauth.authorize(client)

    for secret in (
        "",
        "wrong",
        other.client_secret,
        client.client_secret[:-1] + ("y" if client.client_secret.endswith("x") else "x"),
    ):
        await invalid_client(oauth.redeem(flow, client_secret=secret))
    # Failed client authentication does not consume the code.
    assert (await oauth.redeem(flow)).access_token

    # RFC 6749 section 2.3: a public client has no credentials to present.
    client = await oauth.public_client()
    assert client.client_secret == ""
    flow = await oauth.authorize(client)

    await invalid_client(oauth.redeem(flow, client_secret="tscs_anything"))
    response = await oauth.redeem(flow)
    assert response.access_token
    assert response.refresh_token

    # A client whose registration lost the grant since Authorize cannot redeem.
    client = await oauth.client()
    flow = await oauth.authorize(client)
    await oauth.update_client(
        client_registry_pb2.Client(client_id=client.client_id, allowed_grant_types=[CC]),
        "allowed_grant_types",
    )
    await expect(oauth.redeem(flow), grpc.StatusCode.PERMISSION_DENIED, "UNAUTHORIZED_CLIENT")
