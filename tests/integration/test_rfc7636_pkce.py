"""RFC 7636 conformance (Proof Key for Code Exchange) against a real server and a real
Valkey: the Appendix B vector end to end, verifier and challenge syntax (sections 4.1,
4.2), the S256 and plain transformations, the default method (section 4.3), the server's
verification (section 4.6), and RFC 9700 section 2.1.1: public clients must use PKCE and
a verifier without a challenge is refused, so PKCE cannot be stripped from a flow."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator

import pytest

from tests.harness.grpc_server import AppFactory
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import (
    PLAIN,
    S256,
    UNSPECIFIED_METHOD,
    OAuth,
    challenge_s256,
    invalid_grant,
    invalid_request,
    new_verifier,
    oauth_server,
)
from tokenservice_server.domain.credentials import digest
from tokenservice_server.domain.pkce import s256

# RFC 7636 Appendix B.
APPENDIX_B_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
APPENDIX_B_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
# The octets of the verifier's SHA-256 as printed in Appendix B.
APPENDIX_B_HASH = bytes(
    [19, 211, 30, 150, 26, 26, 216, 236, 47, 22, 177, 12, 76, 152, 46, 8,
     118, 168, 120, 173, 109, 241, 68, 86, 110, 225, 137, 74, 203, 112, 249, 195]
)  # fmt: skip

# 43-128 characters of ALPHA / DIGIT / "-" / "." / "_" / "~" (section 4.1).
SHORTEST_VERIFIER = "a" * 43
LONGEST_VERIFIER = ("AZaz09-._~" * 13)[:128]
MALFORMED = [
    "a" * 42,  # too short
    "a" * 129,  # too long
    "a" * 42 + "+",  # base64 (not base64url) characters
    "a" * 42 + "/",
    "a" * 42 + "=",  # padding
    "a" * 42 + " ",
    "a" * 42 + "é",
    "a" * 42 + "%",
]


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as running:
        yield running


def test_s256_transformation_matches_appendix_b() -> None:
    assert hashlib.sha256(APPENDIX_B_VERIFIER.encode("ascii")).digest() == APPENDIX_B_HASH
    assert base64.urlsafe_b64encode(APPENDIX_B_HASH).rstrip(b"=").decode() == (APPENDIX_B_CHALLENGE)
    assert s256(APPENDIX_B_VERIFIER) == APPENDIX_B_CHALLENGE
    assert challenge_s256(APPENDIX_B_VERIFIER) == APPENDIX_B_CHALLENGE
    for verifier in (SHORTEST_VERIFIER, LONGEST_VERIFIER, new_verifier()):
        assert s256(verifier) == challenge_s256(verifier)
        assert len(s256(verifier)) == 43


async def test_appendix_b_vector_end_to_end(oauth: OAuth) -> None:
    client = await oauth.public_client()
    flow = await oauth.authorize(
        client, verifier=APPENDIX_B_VERIFIER, challenge=APPENDIX_B_CHALLENGE, method=S256
    )
    stored = oauth.sync.hgetall(f"auth:code:{digest(flow.code)}")
    assert stored["ch"] == APPENDIX_B_CHALLENGE
    assert stored["cm"] == "S256"

    response = await oauth.redeem(flow)

    assert response.access_token.startswith("tsat_")
    assert response.refresh_token.startswith("tsrt_")
    assert await oauth.is_active(response.access_token)
    # Single use, the verifier notwithstanding.
    await invalid_grant(oauth.redeem(flow))


async def test_verifier_is_checked(oauth: OAuth) -> None:
    client = await oauth.public_client()
    confidential = await oauth.client()

    # A verifier that does not transform into the challenge.
    flow = await oauth.authorize(client)
    await invalid_grant(oauth.redeem(flow, verifier=new_verifier()))
    # The challenge itself is not the verifier (no downgrade to plain).
    await invalid_grant(oauth.redeem(flow, verifier=challenge_s256(flow.verifier)))
    # Missing although the authorization request had a challenge.
    await invalid_grant(oauth.redeem(flow, verifier=""))
    # Malformed verifiers can never match.
    for verifier in MALFORMED:
        await invalid_grant(oauth.redeem(flow, verifier=verifier), "code_verifier")
    assert (await oauth.redeem(flow)).access_token

    # RFC 9700 section 2.1.1: a verifier for a code issued without a challenge is refused.
    bare = await oauth.authorize(confidential, pkce=False)
    assert bare.verifier == ""
    await invalid_grant(oauth.redeem(bare, verifier=new_verifier()))
    # A confidential client may leave PKCE out altogether.
    assert (await oauth.redeem(bare)).access_token

    # The limits of the verifier syntax, in both directions.
    for verifier in (SHORTEST_VERIFIER, LONGEST_VERIFIER):
        assert (await oauth.code_flow(client, verifier=verifier)).access_token


async def test_challenge_is_checked_at_authorize(oauth: OAuth) -> None:
    client = await oauth.public_client()
    confidential = await oauth.client()

    for challenge in [*MALFORMED, "x"]:
        await invalid_request(
            oauth.authorize(client, challenge=challenge, method=S256), "code_challenge"
        )
    # Section 4.2: a challenge of 43-128 unreserved characters is well formed.
    for challenge in (SHORTEST_VERIFIER, LONGEST_VERIFIER):
        assert (await oauth.authorize(client, challenge=challenge, method=S256)).code
    # RFC 9700 section 2.1.1: public clients must use PKCE.
    await invalid_request(oauth.authorize(client, pkce=False), "code_challenge")
    for method in (S256, PLAIN, UNSPECIFIED_METHOD):
        await invalid_request(oauth.authorize(client, pkce=False, method=method), "code_challenge")
    assert (await oauth.authorize(confidential, pkce=False)).code
    # An unknown method.
    await invalid_request(oauth.authorize(client, method=99), "code_challenge_method")


async def test_plain_is_refused_unless_enabled(oauth: OAuth) -> None:
    client = await oauth.public_client()
    verifier = new_verifier()
    await invalid_request(
        oauth.authorize(client, verifier=verifier, challenge=verifier, method=PLAIN),
        "code_challenge_method",
    )
    # Section 4.3: without a method the challenge is plain, so it is refused as well.
    await invalid_request(
        oauth.authorize(client, verifier=verifier, challenge=verifier, method=UNSPECIFIED_METHOD),
        "code_challenge_method",
    )
    assert not list(oauth.sync.scan_iter("auth:code:*"))


async def test_plain_when_enabled(app_factory: AppFactory, valkey: RedisProcess) -> None:
    async with oauth_server(app_factory, valkey, allow_plain_pkce=True) as oauth:
        client = await oauth.public_client()

        # code_challenge = code_verifier.
        flow = await oauth.authorize(client, method=PLAIN)
        assert oauth.sync.hget(f"auth:code:{digest(flow.code)}", "cm") == "plain"
        await invalid_grant(oauth.redeem(flow, verifier=new_verifier()))
        await invalid_grant(oauth.redeem(flow, verifier=challenge_s256(flow.verifier)))
        assert (await oauth.redeem(flow)).access_token

        # Section 4.3: a challenge without a method is plain, not S256.
        verifier = new_verifier()
        flow = await oauth.authorize(
            client, verifier=verifier, challenge=verifier, method=UNSPECIFIED_METHOD
        )
        assert oauth.sync.hget(f"auth:code:{digest(flow.code)}", "cm") == "plain"
        assert (await oauth.redeem(flow)).access_token
        s256_challenge = await oauth.authorize(
            client, verifier=verifier, challenge=challenge_s256(verifier), method=UNSPECIFIED_METHOD
        )
        await invalid_grant(oauth.redeem(s256_challenge))

        # S256 keeps its meaning on a server that allows plain: the challenge itself is
        # not accepted as the verifier.
        flow = await oauth.authorize(client, method=S256)
        await invalid_grant(oauth.redeem(flow, verifier=challenge_s256(flow.verifier)))
        assert (await oauth.redeem(flow)).access_token
