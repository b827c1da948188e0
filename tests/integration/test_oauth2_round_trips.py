"""Redis round trips per TokenService RPC, counted on the wire.

Every write of commands from the server's Redis clients to Valkey is recorded (one write
is one round trip: a pipeline or MULTI/EXEC is one write), with each EVALSHA named by
its script. The server runs with a long health interval so its probe stays quiet, its
client cache is warm and its scripts are loaded (a cold cache costs one extra read of
the client record; a fresh Redis one SCRIPT LOAD), and its hot-token cache (on by
default) holds the admin's bearer token.

Measured (and asserted exactly below):

- IntrospectToken: 1 pipeline (the target token and its revocation marker; the caller's
  token too unless cached), 0 when the target is a cached access token.
- RevokeToken with client credentials: 1 (one script)
- IssueToken (every grant): 1 script, which also counts the request against the token
  endpoint's rate limits; a request refused before storage (a wrong secret) costs one
  more, the ``rate_limit`` script counting the failure.
- Authorize, the session RPCs, RevokeTokens, GetTokenStats, and RevokeToken with a bearer
  token: 1, the operation, once the caller's bearer token is in the hot-token cache. A
  caller token this replica has not seen live in the last ``token_cache.ttl`` seconds
  costs one lookup first (2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bearer, hot_token_cache_in_use, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_flows import (
    Flow,
    RoundTrips,
    open_flow,
    recording_round_trips,
)
from tokenservice.v1 import token_service_pb2 as pb

# Token lookups (one or several tokens): their records and revocation markers, one script.
LOOKUP = ("evalsha:lookup_tokens",)
RATE_LIMIT = ("evalsha:rate_limit",)  # counting a failure decided before storage


@pytest.fixture
async def flow(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[Flow]:
    # Default token endpoint limits: the limiter's cost is part of what is measured.
    async with open_flow(
        app_factory, valkey, health_interval=60, rate_limit={}, token_cache={"ttl": 60}
    ) as opened:
        await hot_token_cache_in_use(opened.app)
        yield opened


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    with recording_round_trips(monkeypatch) as recorder:
        yield recorder


async def _warm(flow: Flow) -> None:
    """Load every script and cache the clients involved."""
    client = await flow.client()
    issued = await flow.login(client)
    await flow.refresh(client, issued.refresh_token)
    await flow.revoke(client, issued.access_token)
    session = await flow.create_session(client_id=client.client_id)
    await flow.tokens.ExtendSession(
        pb.ExtendSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    await flow.tokens.EndSession(
        pb.EndSessionRequest(session_id=session.session_id), metadata=flow.admin_metadata
    )
    await flow.tokens.RevokeTokens(
        pb.RevokeTokensRequest(subject="nobody"), metadata=flow.admin_metadata
    )
    # A failure decided before storage loads the script that counts failures.
    with pytest.raises(grpc.aio.AioRpcError):
        await flow.tokens.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
                client_id=client.client_id,
                client_secret="wrong",
                refresh_token=issued.refresh_token,
            ),
            timeout=5,
        )


@pytest.fixture
async def warm(flow: Flow) -> Flow:
    await _warm(flow)
    return flow


async def test_issue_token_authorization_code_is_one_script(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    await warm.login(client)  # the client's cache entry
    code, verifier = await warm.authorize(client)
    with trips.measure() as measured:
        await warm.redeem(client, code, verifier)
    assert measured == [("evalsha:redeem_code",)]


async def test_issue_token_refresh_token_is_one_script(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    for _ in range(3):
        with trips.measure() as measured:
            issued = await warm.refresh(client, issued.refresh_token)
        assert measured == [("evalsha:rotate_refresh",)]


async def test_a_refused_refresh_reuse_is_one_script(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    await warm.refresh(client, issued.refresh_token)
    with trips.measure() as measured, pytest.raises(grpc.aio.AioRpcError, match="already used"):
        await warm.refresh(client, issued.refresh_token)
    assert measured == [("evalsha:rotate_refresh",)]


async def test_a_wrong_secret_costs_only_the_failure_count(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    with trips.measure() as measured, pytest.raises(grpc.aio.AioRpcError, match="authentication"):
        await warm.tokens.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
                client_id=client.client_id,
                client_secret="wrong",
                refresh_token=issued.refresh_token,
            ),
            timeout=5,
        )
    # The cached client record refused it; it is re-read once (another replica may have
    # rotated the secret), then the failure is counted against the limits.
    assert measured == [("hgetall",), RATE_LIMIT]


async def test_issue_token_is_one_round_trip(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    with trips.measure() as measured:
        await warm.refresh(client, issued.refresh_token)
    assert len(measured) == 1, measured


async def test_introspect_token_is_one_pipeline(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    for token in (issued.access_token, issued.refresh_token):
        with trips.measure() as measured:
            await warm.introspect(token)
        # The target and its revocation marker (the caller's token is cached; the
        # introspection counter is buffered and flushed in batches).
        assert measured == [LOOKUP], measured
    # A live access token is cached by its first lookup; a malformed one needs nothing.
    for token in (issued.access_token, "not-a-token"):
        with trips.measure() as measured:
            await warm.introspect(token)
        assert measured == [], measured


async def test_introspect_looks_up_caller_and_target_in_one_pipeline(
    warm: Flow, trips: RoundTrips
) -> None:
    client = await warm.client()
    issued = await warm.login(client)
    fresh = await issue_token(warm.channel, warm.admin)
    with trips.measure() as measured:
        await warm.tokens.IntrospectToken(
            pb.IntrospectTokenRequest(token=issued.refresh_token), metadata=bearer(fresh)
        )
    assert measured == [LOOKUP], measured


async def test_revoke_token_with_client_credentials_is_one_script(
    warm: Flow, trips: RoundTrips
) -> None:
    client = await warm.client()
    for kind in ("access_token", "refresh_token"):
        issued = await warm.login(client)
        with trips.measure() as measured:
            await warm.revoke(client, getattr(issued, kind))
        assert measured == [("evalsha:revoke_token",)]
        assert not await warm.active(issued.access_token)


async def test_revoke_token_with_a_bearer_token_is_one_script(
    warm: Flow, trips: RoundTrips
) -> None:
    client = await warm.client(client_credentials=True)
    issued = await warm.login(client)
    own = (
        await warm.tokens.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=client.client_id,
                client_secret=client.client_secret,
            )
        )
    ).access_token
    await warm.introspect(own)  # the caller's first lookup caches it
    with trips.measure() as measured:
        await warm.tokens.RevokeToken(
            pb.RevokeTokenRequest(token=issued.refresh_token), metadata=bearer(own)
        )
    assert measured == [("evalsha:revoke_token",)]  # the caller's token was cached
    assert not await warm.active(issued.access_token)


async def test_authorize_is_one_script(warm: Flow, trips: RoundTrips) -> None:
    client = await warm.client()
    await warm.authorize(client)  # the client's cache entry
    session = await warm.create_session(client_id=client.client_id)
    for session_id in ("", session.session_id):
        with trips.measure() as measured:
            await warm.authorize(client, session_id=session_id)
        assert measured == [("evalsha:store_code",)]


async def test_session_rpcs_are_one_round_trip(warm: Flow, trips: RoundTrips) -> None:
    meta = warm.admin_metadata
    with trips.measure() as created:
        session = await warm.create_session(attributes={"ip": "198.51.100.1"})
    sid = session.session_id
    with trips.measure() as got:
        await warm.tokens.GetSession(pb.GetSessionRequest(session_id=sid), metadata=meta)
    with trips.measure() as extended:
        await warm.tokens.ExtendSession(pb.ExtendSessionRequest(session_id=sid), metadata=meta)
    with trips.measure() as ended:
        await warm.tokens.EndSession(pb.EndSessionRequest(session_id=sid), metadata=meta)

    # CreateSession: hash, TTL and live-count entry in one script.
    assert created == [("evalsha:create_session",)]
    assert got == [("hgetall",)]
    assert extended == [("evalsha:extend_session",)]
    # An admin's session end is audited: the script writes the entry (docs/security.md).
    assert ended == [("evalsha:revoke_index",)]


async def test_operator_rpcs_are_one_round_trip(warm: Flow, trips: RoundTrips) -> None:
    meta = warm.admin_metadata
    with trips.measure() as by_subject:
        await warm.tokens.RevokeTokens(pb.RevokeTokensRequest(subject="alice"), metadata=meta)
    with trips.measure() as by_client:
        await warm.tokens.RevokeTokens(pb.RevokeTokensRequest(client_id="app-x"), metadata=meta)
    with trips.measure() as stats:
        await warm.stats()
    assert by_subject == by_client == [("evalsha:revoke_index",)]
    assert stats == [("hgetall", "zcount", "zcount", "zcount")]


async def test_a_caller_token_is_looked_up_once_then_cached(warm: Flow, trips: RoundTrips) -> None:
    fresh = await issue_token(warm.channel, warm.admin)  # this replica has not seen it yet
    meta = bearer(fresh)
    with trips.measure() as first:
        await warm.tokens.GetTokenStats(pb.GetTokenStatsRequest(), metadata=meta)
    with trips.measure() as second:
        await warm.tokens.GetTokenStats(pb.GetTokenStatsRequest(), metadata=meta)
    assert first == [LOOKUP, ("hgetall", "zcount", "zcount", "zcount")]
    assert second == [("hgetall", "zcount", "zcount", "zcount")]


async def test_without_the_token_cache_the_caller_costs_a_lookup(
    app_factory: AppFactory, valkey: RedisProcess, trips: RoundTrips
) -> None:
    async with open_flow(
        app_factory, valkey, health_interval=60, rate_limit={}, token_cache={"enabled": False}
    ) as flow:
        await flow.stats()
        with trips.measure() as measured:
            await flow.stats()
        assert measured == [LOOKUP, ("hgetall", "zcount", "zcount", "zcount")]


# -- cross-check with the server's own command statistics -----------------------------------


def _calls(flow: Flow) -> Counter[str]:
    stats = flow.sync.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


async def test_commandstats_agree_for_revoke_and_introspect(warm: Flow) -> None:
    """What Valkey counts: one EVALSHA (the commands inside it are counted too, but are
    not round trips) for RevokeToken; one lookup script for IntrospectToken, reading the
    introspected token's fields and revocation marker (the caller's is cached)."""
    client = await warm.client()
    issued = await warm.login(client)

    before = _calls(warm)
    await warm.revoke(client, issued.access_token)
    delta = _calls(warm) - before
    delta.pop("info", None)
    delta.pop("ping", None)  # the revocation feed's keepalive
    assert delta["evalsha"] == 1, delta
    # Inside revoke_token.lua: the owner check, and the revocation of one access token:
    # its record read to unindex it (client, family and subject sets, cleanup entries),
    # deleted, a blacklist marker, the counter, and the hot-token caches told.
    assert delta == Counter(
        {"evalsha": 1, "hget": 1, "ttl": 1, "hgetall": 1, "srem": 3, "zrem": 2, "del": 1}
        | {"set": 1, "hincrby": 1, "publish": 1}
    ), delta

    before = _calls(warm)
    await warm.introspect(issued.refresh_token)
    delta = _calls(warm) - before
    delta.pop("info", None)
    delta.pop("ping", None)  # the revocation feed's keepalive
    assert delta == Counter({"evalsha": 1, "hmget": 1, "exists": 1}), delta
