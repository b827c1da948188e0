"""Races with real concurrency against a real server and a real Valkey: many IssueToken
and RevokeToken calls in flight at once, over several HTTP/2 connections, each grant
step one Lua script. What must hold whatever the interleaving:

- an authorization code is redeemed at most once, and a second redemption revokes what
  the first one issued (RFC 6749 section 4.1.2);
- a refresh token is exchanged at most once (plus exactly one retry within the configured
  grace period), and a grant family never has two live refresh tokens (RFC 9700 section
  4.14.2);
- a revocation racing with refreshes never leaves a live token of the family behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_flows import Flow, channels, expect_error, open_flow, settle
from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.domain.credentials import digest

CONCURRENCY = 50
GRACE = 10.0  # seconds; long enough that every racing request lands within it


@pytest.fixture
async def flow(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[Flow]:
    async with open_flow(app_factory, valkey) as opened:
        yield opened


@pytest.fixture
async def grace_flow(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[Flow]:
    async with open_flow(app_factory, valkey, auth={"refresh_reuse_grace": GRACE}) as opened:
        yield opened


def _successes(outcomes: list[object]) -> list[pb.IssueTokenResponse]:
    return [outcome for outcome in outcomes if isinstance(outcome, pb.IssueTokenResponse)]


def _refused(outcomes: list[object], count: int, *, as_reuse: int) -> None:
    """``count`` of the outcomes are INVALID_GRANT, ``as_reuse`` of them saying that the
    grant was already used (the others found it revoked already)."""
    refused = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert len(refused) == count, [type(outcome).__name__ for outcome in outcomes]
    for error in refused:
        expect_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")
    reuses = [error for error in refused if "already used" in (error.details() or "")]
    assert len(reuses) == as_reuse, [error.details() for error in refused]


async def _all_inactive(flow: Flow, tokens: list[str]) -> None:
    answers = await asyncio.gather(*(flow.introspect(token) for token in tokens))
    assert [answer.active for answer in answers] == [False] * len(tokens)


# -- authorization codes -------------------------------------------------------------------


async def test_fifty_simultaneous_redemptions_of_one_code_yield_one_success(flow: Flow) -> None:
    client = await flow.client()
    code, verifier = await flow.authorize(client)
    reuse_before = flow.counter("authorization_code_reuse")

    async with channels(flow.target, 5) as pool:
        outcomes = await settle(
            [
                flow.redeem(client, code, verifier, channel=pool[n % len(pool)])
                for n in range(CONCURRENCY)
            ]
        )

    (winner,) = _successes(outcomes)
    _refused(outcomes, CONCURRENCY - 1, as_reuse=CONCURRENCY - 1)
    # Every later redemption was recognised as a reuse of the code ...
    assert flow.counter("authorization_code_reuse") == reuse_before + CONCURRENCY - 1
    # ... and the first of them revoked what the winner got: RFC 6749 section 4.1.2 ("SHOULD
    # revoke all tokens previously issued based on that authorization code"). Whoever
    # presents a code twice is an attacker or a broken client; the user logs in again.
    issued = [winner.access_token, winner.refresh_token]
    await _all_inactive(flow, issued)
    flow.assert_family_gone(winner.grant_id, issued)
    after = await settle([flow.refresh(client, winner.refresh_token)])
    expect_error(after[0], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")


async def test_a_code_redeemed_twice_in_sequence_revokes_the_first_tokens(flow: Flow) -> None:
    client = await flow.client()
    code, verifier = await flow.authorize(client)
    first = await flow.redeem(client, code, verifier)
    assert await flow.active(first.access_token)
    assert await flow.active(first.refresh_token)

    second = await settle([flow.redeem(client, code, verifier)])
    _refused(second, 1, as_reuse=1)

    await _all_inactive(flow, [first.access_token, first.refresh_token])
    expect_error(
        (await settle([flow.refresh(client, first.refresh_token)]))[0],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_GRANT",
    )
    flow.assert_family_gone(first.grant_id, [first.access_token, first.refresh_token])


# -- refresh tokens ------------------------------------------------------------------------


async def test_fifty_simultaneous_refreshes_without_grace_yield_one_success(flow: Flow) -> None:
    client = await flow.client()
    start = await flow.login(client)
    reuse_before = flow.counter("refresh_token_reuse")

    async with channels(flow.target, 5) as pool:
        outcomes = await settle(
            [
                flow.refresh(client, start.refresh_token, channel=pool[n % len(pool)])
                for n in range(CONCURRENCY)
            ]
        )

    (winner,) = _successes(outcomes)
    assert winner.grant_id == start.grant_id
    # The first request to present the rotated token again is a reuse: the whole family is
    # revoked (RFC 9700 section 4.14.2), the winner's fresh pair included, and the token
    # itself is gone, so the 48 after it find an unknown (revoked) token.
    _refused(outcomes, CONCURRENCY - 1, as_reuse=1)
    assert flow.counter("refresh_token_reuse") == reuse_before + 1
    every = [start.access_token, start.refresh_token, winner.access_token, winner.refresh_token]
    await _all_inactive(flow, every)
    assert flow.live_refresh_records(start.grant_id) == []
    flow.assert_family_gone(start.grant_id, every)


async def test_fifty_simultaneous_refreshes_with_grace_yield_two_successes(
    grace_flow: Flow,
) -> None:
    flow = grace_flow
    client = await flow.client()
    start = await flow.login(client)
    reuse_before = flow.counter("refresh_token_reuse")

    async with channels(flow.target, 5) as pool:
        outcomes = await settle(
            [
                flow.refresh(client, start.refresh_token, channel=pool[n % len(pool)])
                for n in range(CONCURRENCY)
            ]
        )

    # The rotation, plus the one retry the grace period allows (for a lost response);
    # the third use is a reuse and revokes the family, the two grace successes included.
    winners = _successes(outcomes)
    assert len(winners) == 2
    _refused(outcomes, CONCURRENCY - 2, as_reuse=1)
    assert flow.counter("refresh_token_reuse") == reuse_before + 1
    every = [start.access_token, start.refresh_token]
    every += [token for won in winners for token in (won.access_token, won.refresh_token)]
    await _all_inactive(flow, every)
    flow.assert_family_gone(start.grant_id, every)


async def test_two_simultaneous_refreshes_within_grace_leave_one_live_refresh_token(
    grace_flow: Flow,
) -> None:
    flow = grace_flow
    client = await flow.client()
    for _ in range(10):
        start = await flow.login(client)
        first, second = _successes(
            await settle([flow.refresh(client, start.refresh_token) for _ in range(2)])
        )
        # Both succeed, but the earlier pair is revoked by the retry: exactly one of the
        # two refresh tokens (and its access token) is live, never both.
        live = [won for won in (first, second) if await flow.active(won.refresh_token)]
        assert len(live) == 1
        (survivor,) = live
        (loser,) = [won for won in (first, second) if won is not survivor]
        assert await flow.active(survivor.access_token)
        assert not await flow.active(loser.access_token)
        assert flow.live_refresh_records(start.grant_id) == [
            f"auth:refresh_token:{digest(survivor.refresh_token)}"
        ]
        # A third use of the original token is a reuse: the family dies.
        expect_error(
            (await settle([flow.refresh(client, start.refresh_token)]))[0],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_GRANT",
        )
        assert not await flow.active(survivor.refresh_token)
        assert flow.live_refresh_records(start.grant_id) == []


async def test_grace_retry_after_the_successor_was_used_is_a_reuse(grace_flow: Flow) -> None:
    """The grace period is for a response that was lost. Once the successor has been
    used, the response evidently arrived: the old token coming back is a replay, and
    granting it would leave two live refresh tokens in one family (the successor's
    successor and the replay's)."""
    flow = grace_flow
    client = await flow.client()
    start = await flow.login(client)
    second = await flow.refresh(client, start.refresh_token)
    third = await flow.refresh(client, second.refresh_token)  # the client carries on

    replay = (await settle([flow.refresh(client, start.refresh_token)]))[0]

    _refused([replay], 1, as_reuse=1)
    assert flow.live_refresh_records(start.grant_id) == []
    await _all_inactive(flow, [third.access_token, third.refresh_token])


async def test_grace_retry_after_the_successor_was_revoked_is_refused(grace_flow: Flow) -> None:
    flow = grace_flow
    client = await flow.client()
    start = await flow.login(client)
    second = await flow.refresh(client, start.refresh_token)
    await flow.revoke(client, second.refresh_token)  # the client logs out

    retry = (await settle([flow.refresh(client, start.refresh_token)]))[0]

    expect_error(retry, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")
    assert flow.live_refresh_records(start.grant_id) == []


# -- revocation racing with refresh --------------------------------------------------------


async def _revocation_race(flow: Flow, iterations: int, refreshes: int) -> None:
    client = await flow.client()
    async with channels(flow.target, 3) as pool:
        for iteration in range(iterations):
            start = await flow.login(client)
            calls = [
                flow.refresh(client, start.refresh_token, channel=pool[n % len(pool)])
                for n in range(refreshes)
            ]
            # The revocation goes in at a different position every iteration.
            position = iteration % (refreshes + 1)
            calls.insert(position, flow.revoke(client, start.refresh_token, channel=pool[2]))
            outcomes = await settle(calls)
            revoked = outcomes.pop(position)
            assert isinstance(revoked, pb.RevokeTokenResponse), revoked  # RFC 7009: always OK
            returned = [start.access_token, start.refresh_token]
            for outcome in outcomes:
                if isinstance(outcome, pb.IssueTokenResponse):
                    returned += [outcome.access_token, outcome.refresh_token]
                else:
                    expect_error(outcome, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")
            await _all_inactive(flow, returned)
            flow.assert_family_gone(start.grant_id, returned)


async def test_revocation_racing_with_one_refresh_never_leaves_a_live_token(flow: Flow) -> None:
    await _revocation_race(flow, iterations=30, refreshes=1)


async def test_revocation_racing_with_refreshes_within_grace_never_leaves_a_live_token(
    grace_flow: Flow,
) -> None:
    # With a grace period two of the refreshes can succeed; the revocation still ends
    # the family whichever of them it lands before, between or after.
    await _revocation_race(grace_flow, iterations=30, refreshes=2)


async def test_revoking_an_old_token_stops_a_refresh_chain_in_flight(flow: Flow) -> None:
    """A client refreshing as fast as it can while its grant is revoked through the
    original (long rotated) refresh token: the chain stops, nothing stays live."""
    client = await flow.client()
    for iteration in range(10):
        start = await flow.login(client)
        returned = [start.access_token, start.refresh_token]
        rotated = asyncio.Event()

        async def chain(
            start: pb.IssueTokenResponse = start,
            returned: list[str] = returned,
            rotated: asyncio.Event = rotated,
        ) -> int:
            current = start.refresh_token
            for steps in range(200):
                try:
                    response = await flow.refresh(client, current)
                except grpc.aio.AioRpcError as error:
                    expect_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")
                    return steps
                returned.extend([response.access_token, response.refresh_token])
                current = response.refresh_token
                rotated.set()
            raise AssertionError("the revocation did not stop the refresh chain")

        async def revoke_during_the_chain(
            token: str = start.refresh_token,
            rotated: asyncio.Event = rotated,
            delay: float = 0.001 * (iteration % 4),
        ) -> None:
            await rotated.wait()
            await asyncio.sleep(delay)
            await flow.revoke(client, token)

        steps, _ = await asyncio.gather(chain(), revoke_during_the_chain())
        assert steps >= 1
        await _all_inactive(flow, returned)
        flow.assert_family_gone(start.grant_id, returned)
