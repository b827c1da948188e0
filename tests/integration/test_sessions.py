"""User sessions (CreateSession, GetSession, ExtendSession, EndSession), tokens bound to
them, and the operators' bulk revocation (RevokeTokens by subject or client), against a
real server and a real Valkey."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_flows import Flow, expect_error, failure, open_flow, settle
from tokenservice.v1 import token_service_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNKNOWN_SESSION = "ses_" + "A" * 31  # well formed, never created


@pytest.fixture
async def flow(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[Flow]:
    async with open_flow(app_factory, valkey) as opened:
        yield opened


def _seconds(stamp: object) -> float:
    return stamp.ToMilliseconds() / 1000  # type: ignore[attr-defined, no-any-return]


# -- create, get, extend -------------------------------------------------------------------


async def test_create_and_get_a_session(flow: Flow) -> None:
    client = await flow.client()
    before = time.time()
    session = await flow.create_session(
        subject="alice",
        client_id=client.client_id,
        attributes={"ip": "203.0.113.7", "user_agent": "Firefox/140"},
    )

    assert session.session_id.startswith("ses_")
    assert len(session.session_id) == 35
    assert session.subject == "alice"
    assert session.client_id == client.client_id
    assert dict(session.attributes) == {"ip": "203.0.113.7", "user_agent": "Firefox/140"}
    created, expires = _seconds(session.create_time), _seconds(session.expire_time)
    assert before - 0.01 <= created <= time.time() + 0.01
    assert expires - created == pytest.approx(3600, abs=0.002)  # the default idle timeout

    key = f"auth:session:{session.session_id}"
    assert 3595 <= flow.sync.ttl(key) <= 3600
    # The cleanup score is the expiry in whole seconds (truncated); the answer's expiry is
    # in milliseconds, so an expiry within the last millisecond of a second reads as the
    # next second here (int() of it flaked once in ~2,000 runs).
    score = flow.sync.zscore("auth_session_cleanup", session.session_id)
    assert score == int(score)
    assert expires - 1.001 < score <= expires
    got = await flow.tokens.GetSession(
        pb.GetSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    assert got.session == session

    # Identifiers are never reused.
    other = await flow.create_session(subject="alice", client_id=client.client_id)
    assert other.session_id != session.session_id


async def test_custom_ttl_and_its_bounds(flow: Flow) -> None:
    session = await flow.create_session(ttl_seconds=120)
    assert _seconds(session.expire_time) - _seconds(session.create_time) == pytest.approx(120)
    assert 115 <= flow.sync.ttl(f"auth:session:{session.session_id}") <= 120
    longest = await flow.create_session(ttl_seconds=30 * 86_400)
    assert flow.sync.ttl(f"auth:session:{longest.session_id}") >= 30 * 86_400 - 5

    for ttl in (59, -1, 30 * 86_400 + 1):
        error = await failure(
            flow.tokens.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(subject="alice", client_id="web-app"), ttl_seconds=ttl
                ),
                metadata=flow.admin_metadata,
            )
        )
        expect_error(error, INVALID, "INVALID_REQUEST", "ttl_seconds")


async def test_extend_slides_the_expiry(flow: Flow) -> None:
    session = await flow.create_session(ttl_seconds=60)
    key = f"auth:session:{session.session_id}"
    assert flow.sync.ttl(key) <= 60

    extended = (
        await flow.tokens.ExtendSession(
            pb.ExtendSessionRequest(session_id=session.session_id, ttl_seconds=600),
            metadata=flow.admin_metadata,
        )
    ).session

    assert 595 <= flow.sync.ttl(key) <= 600
    assert extended.session_id == session.session_id
    assert extended.create_time == session.create_time
    moved = _seconds(extended.expire_time)
    assert moved - _seconds(session.expire_time) == pytest.approx(540, abs=2)
    assert moved == pytest.approx(time.time() + 600, abs=2)
    assert flow.sync.zscore("auth_session_cleanup", session.session_id) == int(moved)
    got = await flow.tokens.GetSession(
        pb.GetSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    assert got.session == extended

    # 0 means the server default; an extension may also shorten the idle timeout.
    default = await flow.tokens.ExtendSession(
        pb.ExtendSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    assert 3595 <= flow.sync.ttl(key) <= 3600
    assert _seconds(default.session.expire_time) == pytest.approx(time.time() + 3600, abs=2)


async def test_extending_keeps_the_session_token_index_alive(flow: Flow) -> None:
    """Tokens bound to a session must stay findable for as long as the session lives, or
    EndSession could not revoke them."""
    client = await flow.client()
    session = await flow.create_session(client_id=client.client_id, ttl_seconds=60)
    await flow.login(client, session_id=session.session_id)
    index = f"auth:session_tokens:{session.session_id}"
    assert flow.sync.scard(index) == 2
    await flow.tokens.ExtendSession(
        pb.ExtendSessionRequest(session_id=session.session_id, ttl_seconds=30 * 86_400),
        metadata=flow.admin_metadata,
    )
    assert flow.sync.ttl(index) >= 30 * 86_400 - 5


# -- ending a session revokes its tokens ---------------------------------------------------


async def test_end_session_revokes_every_token_bound_to_it(flow: Flow) -> None:
    client = await flow.client()
    session = await flow.create_session(subject="alice", client_id=client.client_id)
    sid = session.session_id
    first = await flow.login(client, subject="alice", session_id=sid)
    assert first.session_id == sid
    second = await flow.refresh(client, first.refresh_token)
    assert second.session_id == sid
    for token in (first.access_token, second.access_token, second.refresh_token):
        answer = await flow.introspect(token)
        assert answer.active
        assert answer.session_id == sid
    # A second login in the same session, and a token of the same user outside it.
    other_login = await flow.login(client, subject="alice", session_id=sid)
    outside = await flow.login(client, subject="alice")
    revoked_before = flow.counter("access_tokens_revoked") + flow.counter("refresh_tokens_revoked")

    ended = await flow.tokens.EndSession(
        pb.EndSessionRequest(session_id=sid), metadata=flow.admin_metadata
    )

    # Live tokens bound to the session: the first login's access token (refreshing does
    # not revoke it), the refreshed pair, and the second login's pair. The rotated
    # refresh token of the first login was no longer live and is not counted.
    assert ended.revoked_token_count == 5
    revoked_now = flow.counter("access_tokens_revoked") + flow.counter("refresh_tokens_revoked")
    assert revoked_now - revoked_before == 5
    bound = [
        first.access_token,
        first.refresh_token,
        second.access_token,
        second.refresh_token,
        other_login.access_token,
        other_login.refresh_token,
    ]
    for token in bound:
        assert not await flow.active(token)
    assert await flow.active(outside.access_token)
    assert await flow.active(outside.refresh_token)
    for response in (second, other_login):
        expect_error(
            (await settle([flow.refresh(client, response.refresh_token)]))[0],
            INVALID,
            "INVALID_GRANT",
        )
    assert not flow.sync.exists(f"auth:session:{sid}")
    assert not flow.sync.exists(f"auth:session_tokens:{sid}")
    assert flow.sync.zscore("auth_session_cleanup", sid) is None

    # The session is gone for every RPC.
    for call in (
        flow.tokens.GetSession(pb.GetSessionRequest(session_id=sid), metadata=flow.admin_metadata),
        flow.tokens.ExtendSession(
            pb.ExtendSessionRequest(session_id=sid), metadata=flow.admin_metadata
        ),
        flow.tokens.EndSession(pb.EndSessionRequest(session_id=sid), metadata=flow.admin_metadata),
    ):
        expect_error(await failure(call), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "session_id")
    error = await failure(flow.authorize(client, session_id=sid))
    expect_error(error, INVALID, "INVALID_REQUEST", "session_id")


async def test_end_session_without_tokens_revokes_none(flow: Flow) -> None:
    session = await flow.create_session()
    ended = await flow.tokens.EndSession(
        pb.EndSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    assert ended.revoked_token_count == 0
    assert not flow.sync.exists(f"auth:session:{session.session_id}")


async def test_a_code_from_an_ended_session_cannot_be_redeemed(flow: Flow) -> None:
    client = await flow.client()
    session = await flow.create_session(client_id=client.client_id)
    code, verifier = await flow.authorize(client, session_id=session.session_id)
    await flow.tokens.EndSession(
        pb.EndSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    error = await failure(flow.redeem(client, code, verifier))
    expect_error(error, INVALID, "INVALID_GRANT", "code")
    assert "session" in (error.details() or "")


async def test_an_expired_session_stops_its_refresh_tokens(flow: Flow) -> None:
    """Expiry is simulated by deleting the session hash, as Redis does when its TTL runs
    out (the shortest TTL is 60 s)."""
    client = await flow.client()
    session = await flow.create_session(client_id=client.client_id, ttl_seconds=60)
    sid = session.session_id
    issued = await flow.login(client, session_id=sid)

    assert flow.sync.delete(f"auth:session:{sid}") == 1

    error = await failure(flow.refresh(client, issued.refresh_token))
    expect_error(error, INVALID, "INVALID_GRANT", "refresh_token")
    assert "session" in (error.details() or "")
    # The failed refresh revoked the family, so the grant is over for good ...
    assert not await flow.active(issued.refresh_token)
    assert not await flow.active(issued.access_token)
    flow.assert_family_gone(issued.grant_id, [issued.access_token, issued.refresh_token])
    # ... and the session is gone for every session RPC.
    expect_error(
        await failure(
            flow.tokens.GetSession(
                pb.GetSessionRequest(session_id=sid), metadata=flow.admin_metadata
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "session_id",
    )
    error = await failure(flow.authorize(client, session_id=sid))
    expect_error(error, INVALID, "INVALID_REQUEST", "session_id")


# -- errors --------------------------------------------------------------------------------


async def test_unknown_and_malformed_session_ids(flow: Flow) -> None:
    client = await flow.client()
    for call in (
        flow.tokens.GetSession(
            pb.GetSessionRequest(session_id=UNKNOWN_SESSION), metadata=flow.admin_metadata
        ),
        flow.tokens.ExtendSession(
            pb.ExtendSessionRequest(session_id=UNKNOWN_SESSION), metadata=flow.admin_metadata
        ),
        flow.tokens.EndSession(
            pb.EndSessionRequest(session_id=UNKNOWN_SESSION), metadata=flow.admin_metadata
        ),
    ):
        expect_error(await failure(call), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "session_id")

    for malformed in ("", "ses_short", "abc", "ses_" + "A" * 30 + "!", "x" * 35, "ses_" + "A" * 32):
        for call in (
            flow.tokens.GetSession(
                pb.GetSessionRequest(session_id=malformed), metadata=flow.admin_metadata
            ),
            flow.tokens.ExtendSession(
                pb.ExtendSessionRequest(session_id=malformed), metadata=flow.admin_metadata
            ),
            flow.tokens.EndSession(
                pb.EndSessionRequest(session_id=malformed), metadata=flow.admin_metadata
            ),
        ):
            expect_error(await failure(call), INVALID, "INVALID_REQUEST", "session_id")

    for session_id in (UNKNOWN_SESSION, "abc"):
        error = await failure(flow.authorize(client, session_id=session_id))
        expect_error(error, INVALID, "INVALID_REQUEST", "session_id")
    assert flow.counter("authorization_codes_issued") == 0


async def test_a_code_cannot_join_another_subjects_session(flow: Flow) -> None:
    client = await flow.client()
    alices = await flow.create_session(subject="alice")
    error = await failure(flow.authorize(client, subject="mallory", session_id=alices.session_id))
    expect_error(error, INVALID, "INVALID_REQUEST", "session_id")
    assert "another subject" in str(error.details())
    assert flow.counter("authorization_codes_issued") == 0
    code, _ = await flow.authorize(client, subject="alice", session_id=alices.session_id)
    assert code.startswith("tsac_")


async def test_session_field_limits(flow: Flow) -> None:
    at_limits = {f"k{n:02d}" + "x" * 61: "v" * 1024 for n in range(32)}
    session = await flow.create_session(attributes=at_limits)
    assert dict(session.attributes) == at_limits

    cases: list[tuple[pb.CreateSessionRequest, str]] = [
        (pb.CreateSessionRequest(), "session"),
        (pb.CreateSessionRequest(session=pb.Session()), "session.subject"),
        (pb.CreateSessionRequest(session=pb.Session(subject="x" * 257)), "session.subject"),
        (pb.CreateSessionRequest(session=pb.Session(subject="al\nice")), "session.subject"),
        (
            pb.CreateSessionRequest(session=pb.Session(subject="alice", client_id="no spaces")),
            "session.client_id",
        ),
        (pb.CreateSessionRequest(session=pb.Session(subject="alice")), "session.client_id"),
        (
            pb.CreateSessionRequest(
                session=pb.Session(
                    subject="alice",
                    client_id="web-app",
                    attributes={f"k{n}": "v" for n in range(33)},
                )
            ),
            "session.attributes",
        ),
    ]
    for request, field_name in cases:
        error = await failure(flow.tokens.CreateSession(request, metadata=flow.admin_metadata))
        expect_error(error, INVALID, "INVALID_REQUEST", field_name)

    for attributes in ({"k" * 65: "v"}, {"k": "v" * 1025}, {"": "v"}):
        error = await failure(
            flow.tokens.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(subject="alice", client_id="web-app", attributes=attributes)
                ),
                metadata=flow.admin_metadata,
            )
        )
        expect_error(error, INVALID, "INVALID_REQUEST")
        assert (error.details() or "").startswith("session.attributes[")
    assert flow.sync.zcard("auth_session_cleanup") == 1  # only the one at the limits


async def test_session_rpcs_need_scope_tokenservice_authorize(flow: Flow) -> None:
    session = await flow.create_session()
    client = await flow.client()
    _, reader = await flow.service_token("orders:read")
    _, introspector = await flow.service_token("tokenservice.introspect")
    sid = session.session_id

    def calls(metadata: tuple[tuple[str, str], ...]) -> list[object]:
        return [
            flow.tokens.CreateSession(
                pb.CreateSessionRequest(session=pb.Session(subject="mallory")), metadata=metadata
            ),
            flow.tokens.GetSession(pb.GetSessionRequest(session_id=sid), metadata=metadata),
            flow.tokens.ExtendSession(pb.ExtendSessionRequest(session_id=sid), metadata=metadata),
            flow.tokens.EndSession(pb.EndSessionRequest(session_id=sid), metadata=metadata),
            flow.authorize(client, metadata=metadata),
        ]

    for token in (reader, introspector):
        for call in calls(bearer(token)):
            error = await failure(call)  # type: ignore[arg-type]
            expect_error(error, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert "tokenservice.authorize" in (error.details() or "")
    for call in calls(()):
        error = await failure(call)  # type: ignore[arg-type]
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # Nothing happened to the session.
    assert flow.sync.exists(f"auth:session:{sid}")
    assert flow.sync.zcard("auth_session_cleanup") == 1


# -- bulk revocation (RevokeTokens, operators) ----------------------------------------------


async def test_revoke_tokens_by_subject_across_clients(flow: Flow) -> None:
    web = await flow.client()
    mobile = await flow.client(public=True, redirect_uris=("http://127.0.0.1/callback",))
    alice_web = await flow.login(web, subject="alice")
    alice_web2 = await flow.refresh(web, alice_web.refresh_token)
    alice_mobile = await flow.login(
        mobile, subject="alice", redirect_uri="http://127.0.0.1/callback"
    )
    bob = await flow.login(web, subject="bob")

    revoked = await flow.tokens.RevokeTokens(
        pb.RevokeTokensRequest(subject="alice"), metadata=flow.admin_metadata
    )

    # alice's live tokens: web access (first), web pair (refreshed), mobile pair.
    assert revoked.revoked_token_count == 5
    for token in (
        alice_web.access_token,
        alice_web2.access_token,
        alice_web2.refresh_token,
        alice_mobile.access_token,
        alice_mobile.refresh_token,
    ):
        assert not await flow.active(token)
    for response in (alice_web2, alice_mobile):
        expect_error(
            (
                await settle(
                    [
                        flow.refresh(
                            web if response is alice_web2 else mobile, response.refresh_token
                        )
                    ]
                )
            )[0],
            INVALID,
            "INVALID_GRANT",
        )
    assert await flow.active(bob.access_token)
    assert await flow.active(bob.refresh_token)
    assert not flow.sync.exists("auth:subject_tokens:alice")
    # Again: nothing left to revoke, and no error.
    again = await flow.tokens.RevokeTokens(
        pb.RevokeTokensRequest(subject="alice"), metadata=flow.admin_metadata
    )
    assert again.revoked_token_count == 0
    # A new login works as before.
    assert await flow.active((await flow.login(web, subject="alice")).access_token)


async def test_revoke_tokens_by_client(flow: Flow) -> None:
    web = await flow.client(client_credentials=True)
    other = await flow.client()
    users = [await flow.login(web, subject=name) for name in ("alice", "bob")]
    service_token = (
        await flow.tokens.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=web.client_id,
                client_secret=web.client_secret,
            )
        )
    ).access_token
    keep = await flow.login(other, subject="alice")

    revoked = await flow.tokens.RevokeTokens(
        pb.RevokeTokensRequest(client_id=web.client_id), metadata=flow.admin_metadata
    )

    assert revoked.revoked_token_count == 5
    for token in [service_token] + [t for u in users for t in (u.access_token, u.refresh_token)]:
        assert not await flow.active(token)
    assert await flow.active(keep.access_token)
    assert await flow.active(keep.refresh_token)
    assert not flow.sync.exists(f"auth:client_tokens:{web.client_id}")
    # The client stays registered and gets new tokens.
    assert flow.sync.exists(f"auth:client:{web.client_id}")
    fresh = await flow.login(web, subject="alice")
    assert await flow.active(fresh.access_token)
    assert await flow.active((await flow.refresh(web, fresh.refresh_token)).refresh_token)


async def test_revoke_tokens_needs_admin_and_one_selector(flow: Flow) -> None:
    _, authorizer = await flow.service_token("tokenservice.authorize", "tokenservice.introspect")
    for request in (
        pb.RevokeTokensRequest(subject="alice"),
        pb.RevokeTokensRequest(client_id=flow.admin.client_id),
    ):
        error = await failure(flow.tokens.RevokeTokens(request, metadata=bearer(authorizer)))
        expect_error(error, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    error = await failure(flow.tokens.GetTokenStats(pb.GetTokenStatsRequest(), metadata=()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED

    error = await failure(
        flow.tokens.RevokeTokens(pb.RevokeTokensRequest(), metadata=flow.admin_metadata)
    )
    expect_error(error, INVALID, "INVALID_REQUEST", "selector")
    for request, field_name in (
        (pb.RevokeTokensRequest(subject=""), "subject"),
        (pb.RevokeTokensRequest(subject="x" * 257), "subject"),
        (pb.RevokeTokensRequest(client_id=""), "client_id"),
        (pb.RevokeTokensRequest(client_id="not a client id"), "client_id"),
    ):
        error = await failure(flow.tokens.RevokeTokens(request, metadata=flow.admin_metadata))
        expect_error(error, INVALID, "INVALID_REQUEST", field_name)
    # The admin's own token survived all of it.
    assert await flow.active(flow.admin_token)
