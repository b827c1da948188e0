"""GetTokenStats (operators): after a scripted workload every counter adds up exactly,
and the live counts (from the expiry indexes) match what introspection says is live."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_flows import Flow, expect_error, failure, open_flow, settle
from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.domain.credentials import digest
from tokenservice_server.storage import keys

ZERO = pb.GetTokenStatsResponse()


@pytest.fixture
async def flow(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[Flow]:
    async with open_flow(app_factory, valkey) as opened:
        yield opened


async def test_counters_add_up_after_a_scripted_workload(flow: Flow) -> None:
    # The fixture's admin token is the only thing issued so far.
    assert await flow.stats() == pb.GetTokenStatsResponse(
        active_access_tokens=1, access_tokens_issued_total=1
    )
    web = await flow.client()
    service, service_token = await flow.service_token("orders:read")

    # Three logins: three codes, three access and three refresh tokens.
    one = await flow.login(web, subject="alice")
    two = await flow.login(web, subject="bob")
    code, verifier = await flow.authorize(web, subject="carol")
    three = await flow.redeem(web, code, verifier)
    # One refresh: a new pair; the presented refresh token is rotated (no longer live),
    # the first access token stays live until it expires.
    one_b = await flow.refresh(web, one.refresh_token)
    assert await flow.stats() == pb.GetTokenStatsResponse(
        active_access_tokens=6,  # admin, service, three logins, one refresh
        active_refresh_tokens=3,  # one_b, two, three
        access_tokens_issued_total=6,
        refresh_tokens_issued_total=4,
        authorization_codes_issued_total=3,
    )

    # Five introspections (any answer counts; the caller's own lookup does not).
    for token in (one.access_token, one.refresh_token, one_b.access_token, "junk", service_token):
        await flow.introspect(token)
    # Two sessions, one ended (no tokens bound to it).
    await flow.create_session(subject="dave")
    ended = await flow.create_session(subject="erin")
    await flow.tokens.EndSession(
        pb.EndSessionRequest(session_id=ended.session_id), metadata=flow.admin_metadata
    )
    # RFC 7009: bob's client revokes his refresh token, and with it his access token.
    await flow.revoke(web, two.refresh_token)
    # alice's rotated refresh token comes back: a reuse, her family (access tokens of
    # both steps and the live refresh token) is revoked; the rotated one is not counted.
    expect_error(
        (await settle([flow.refresh(web, one.refresh_token)]))[0],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_GRANT",
    )
    # carol's code is redeemed again: a code reuse, her pair is revoked.
    expect_error(
        (await settle([flow.redeem(web, code, verifier)]))[0],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_GRANT",
    )
    # Revoking something already revoked, unknown or foreign changes nothing.
    await flow.revoke(web, two.refresh_token)
    await flow.revoke(web, "tsrt_unknown")
    await flow.revoke(service, flow.admin_token)

    stats = await flow.stats()

    assert stats == pb.GetTokenStatsResponse(
        active_access_tokens=2,  # the admin's and the service's
        active_refresh_tokens=0,
        active_sessions=1,
        access_tokens_issued_total=6,
        refresh_tokens_issued_total=4,
        authorization_codes_issued_total=3,
        access_tokens_revoked_total=4,  # bob 1, alice 2, carol 1
        refresh_tokens_revoked_total=3,  # bob 1, alice 1 (one_b), carol 1
        introspections_total=5,
        refresh_token_reuse_total=1,
        authorization_code_reuse_total=1,
    )
    # Issued = revoked + rotated + live, for each kind (nothing expired yet).
    rotations = 1
    assert stats.access_tokens_issued_total == (
        stats.access_tokens_revoked_total + stats.active_access_tokens
    )
    assert stats.refresh_tokens_issued_total == (
        stats.refresh_tokens_revoked_total + rotations + stats.active_refresh_tokens
    )
    # The live counts agree with introspection, token by token.
    everything = [
        flow.admin_token,
        service_token,
        *(t for r in (one, two, three, one_b) for t in (r.access_token, r.refresh_token)),
    ]
    live = [token for token in everything if await flow.active(token)]
    assert live == [flow.admin_token, service_token]
    # ... and the counters are the auth_stats hash (introspections once flushed).
    assert flow.app.components is not None
    await flow.app.components.check_stats.flush()
    assert flow.counter("introspections") == 5 + len(everything)


async def test_expired_tokens_leave_the_live_counts(flow: Flow) -> None:
    _, token = await flow.service_token("orders:read")
    member_count = flow.sync.zcard("auth_token_cleanup")
    assert (await flow.stats()).active_access_tokens == 2
    # Move one token's expiry into the past in the index, as time passing would.
    client_id = flow.sync.hget(f"auth:access_token:{digest(token)}", "c")
    assert client_id
    entry = keys.access_cleanup_entry(digest(token), str(client_id))
    assert flow.sync.zadd("auth_token_cleanup", {entry: 1}, xx=True) == 0
    assert flow.sync.zscore("auth_token_cleanup", entry) == 1
    assert flow.sync.zcard("auth_token_cleanup") == member_count
    stats = await flow.stats()
    assert stats.active_access_tokens == 1
    assert stats.access_tokens_issued_total == 2


async def test_stats_need_the_admin_scope(flow: Flow) -> None:
    _, authorizer = await flow.service_token("tokenservice.authorize", "tokenservice.introspect")
    error = await failure(
        flow.tokens.GetTokenStats(pb.GetTokenStatsRequest(), metadata=bearer(authorizer))
    )
    expect_error(error, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert "tokenservice.admin" in (error.details() or "")
    error = await failure(flow.tokens.GetTokenStats(pb.GetTokenStatsRequest()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
