"""The hot-token cache across replicas: two in-process servers on one Valkey share nothing
in memory, so a token revoked through one must stop working on the other, within 100 ms
when the invalidation channel is up and at once (the cache bypassed) when it is down."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from tests.harness.clients import token_for
from tests.harness.grpc_server import (
    AppFactory,
    Credentials,
    bootstrap_admin,
    hot_token_cache_in_use,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tests.helpers import eventually
from tests.integration.oauth2_flows import open_flow, recording_round_trips
from tests.integration.test_ext_authz_check import Edge, check_request
from tokenservice.v1 import client_registry_pb2, client_registry_pb2_grpc, token_service_pb2_grpc
from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.domain.credentials import digest
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.domain.tokens import TokenRecord
from tokenservice_server.storage import keys
from tokenservice_server.storage.revocation_feed import REVOCATION_CHANNEL, RevocationFeed

NO_CHECK_LIMITS = {"per_ip": 0, "per_client": 0, "per_route": 0}


def _cache(edge: Edge) -> TokenCache:
    assert edge.app.components is not None
    cache = edge.app.components.token_cache
    assert cache is not None
    return cache


@pytest.fixture
async def replicas(valkey: RedisProcess, app_factory: AppFactory) -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    async def make(count: int = 2, **overrides: Any) -> list[Edge]:
        edges = []
        for _ in range(count):
            overrides.setdefault("redis", {"url": valkey.url})
            overrides.setdefault("rate_limit", NO_CHECK_LIMITS)
            overrides.setdefault("token_cache", {"enabled": True, "ping_interval": 0.1})
            app = await app_factory(**overrides)
            assert app.addresses is not None
            channel = grpc.aio.insecure_channel(app.addresses.grpc_target)
            channels.append(channel)
            admin = await bootstrap_admin(app)
            edge = Edge(app, channel, await issue_token(channel, admin, "tokenservice.admin"))
            edges.append(edge)
        for edge in edges:
            await eventually(functools.partial(_up, edge), timeout=5, interval=0.01)
        return edges

    yield make
    for channel in channels:
        await channel.close()


async def _up(edge: Edge) -> bool:
    return _cache(edge).up


async def _allowed(edge: Edge, token: str) -> bool:
    response = await edge.check(check_request(token))
    return bool(response.status.code == code_pb2.OK)


async def _warm(edge: Edge, token: str) -> None:
    assert await _allowed(edge, token)
    assert digest(token) in _cache(edge)._entries  # a positive lookup is cached


async def _rejected_within(edge: Edge, token: str, bound: float = 1.0) -> float:
    """Seconds until ``edge`` rejects ``token``, polled every millisecond."""
    started = time.monotonic()
    while await _allowed(edge, token):
        assert time.monotonic() - started < bound, "still allowed after the bound"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


async def test_revoke_token_on_one_replica_is_rejected_by_the_other(replicas: Any) -> None:
    a, b = await replicas()
    client, token = await _client_token(a)
    await _warm(a, token)
    await _warm(b, token)

    await _revoke(a, client, token)

    # This replica dropped it synchronously: rejected on the very next check.
    assert digest(token) not in _cache(a)._entries
    assert not await _allowed(a, token)
    elapsed = await _rejected_within(b, token)
    print(f"RevokeToken: replica B rejected the token after {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


async def test_delete_client_on_one_replica_is_rejected_by_the_other(replicas: Any) -> None:
    a, b = await replicas()
    client, token = await _client_token(a)
    await _warm(b, token)

    await client_registry_pb2_grpc.ClientRegistryStub(a.channel).DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=client.client_id),
        metadata=(("authorization", f"Bearer {a.admin_token}"),),
        timeout=5,
    )

    elapsed = await _rejected_within(b, token)
    print(f"DeleteClient: replica B rejected the token after {elapsed * 1000:.1f} ms")


async def test_every_index_revocation_is_published_with_its_attribute(
    replicas: Any, valkey: RedisProcess
) -> None:
    (a,) = await replicas(count=1)
    assert a.app.components is not None
    tokens = a.app.components.tokens
    subscriber = a.app.redis.auth.pubsub()
    await subscriber.subscribe(REVOCATION_CHANNEL)
    assert (await subscriber.get_message(timeout=1))["type"] == "subscribe"
    indexes = [
        (keys.family_key("fam1"), "f:fam1"),
        (keys.subject_tokens_key("alice|x"), "u:alice|x"),
        (keys.session_tokens_key("s1"), "n:s1"),
        (keys.client_tokens_key("c1"), "c:c1"),
    ]
    try:
        for index_key, published in indexes:
            await a.app.redis.auth.sadd(index_key, "a:" + "0" * 64)
            await tokens.revoke_index(index_key)
            message = await subscriber.get_message(timeout=1)
            assert message is not None
            assert message["data"].decode() == published
    finally:
        await subscriber.aclose()


async def test_channel_down_bypasses_the_cache_until_resubscribed(
    replicas: Any, valkey: RedisProcess
) -> None:
    a, b = await replicas()
    client, token = await _client_token(a)
    await _warm(b, token)

    # No channel rights: B's subscription is dropped and refused, and revocation scripts
    # can no longer publish (they still revoke).
    with valkey.client() as admin:
        admin.execute_command("ACL", "SETUSER", "default", "resetchannels")
        try:
            await eventually(lambda: _down(b), timeout=2, interval=0.01)
            assert "tokenservice_token_cache_invalidation_up 0.0" in b.scrape()
            assert len(_cache(b)) == 0
            assert a.app.components is not None
            await a.app.components.tokens.revoke_client_tokens(client.client_id)
            # No message could arrive, yet B rejects the token at once: it asks Redis.
            assert not await _allowed(b, token)
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "allchannels")

    await eventually(lambda: _up(b), timeout=5, interval=0.01)
    assert "tokenservice_token_cache_invalidation_up 1.0" in b.scrape()
    # Back in use, and invalidated again.
    owner, fresh = await _client_token(a)
    await _warm(b, fresh)
    await _revoke(a, owner, fresh)
    await _rejected_within(b, fresh)


async def test_killed_subscription_resubscribes_and_clears(
    replicas: Any, valkey: RedisProcess
) -> None:
    a, b = await replicas()
    owner, token = await _client_token(a)
    await _warm(b, token)
    feed = b.app.revocation_feed
    assert feed is not None
    before = feed.resubscriptions

    with valkey.client() as admin:
        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    async def recovered() -> bool:
        return _cache(b).up and (feed.resubscriptions > before or len(_cache(b)) == 0)

    await eventually(recovered, timeout=5, interval=0.01)
    assert digest(token) not in _cache(b)._entries  # whatever was cached is gone
    await _warm(b, token)
    await _revoke(a, owner, token)
    await _rejected_within(b, token)


async def test_a_cached_check_makes_no_redis_round_trip(
    replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = await replicas(count=1)
    _, token = await _client_token(a)
    await _warm(a, token)  # one round trip (check_access_token.lua) fills the cache
    hits, misses = _lookups(a, "hit"), _lookups(a, "miss")
    with recording_round_trips(monkeypatch) as recorder, recorder.measure() as cached:
        for _ in range(5):
            assert await _allowed(a, token)

    assert [trip for trip in cached if trip != ("ping",)] == []  # but the feed's keep-alive
    assert (_lookups(a, "hit") - hits, _lookups(a, "miss") - misses) == (5, 0)


def _lookups(edge: Edge, result: str) -> float:
    """``tokenservice_token_cache_lookups_total{result=...}`` as ``edge`` exports it now."""
    prefix = f'tokenservice_token_cache_lookups_total{{result="{result}"}} '
    for line in edge.scrape().splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    raise AssertionError(f"no {prefix.strip()} in the scrape")


async def test_counted_limits_keep_one_round_trip(
    replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = await replicas(count=1, rate_limit={"per_ip": 0, "per_client": 1000})
    _, token = await _client_token(a)
    assert await _allowed(a, token)
    with recording_round_trips(monkeypatch) as recorder, recorder.measure() as trips:
        assert await _allowed(a, token)
    assert [trip for trip in trips if trip != ("ping",)] == [("evalsha:check_access_token",)]


async def test_client_with_its_own_limit_is_counted_in_redis(replicas: Any) -> None:
    (a,) = await replicas(count=1)
    _, token = await _client_token(a, rate_limit_per_minute=2)
    answers = [await _allowed(a, token) for _ in range(4)]
    assert answers == [True, True, False, False]


async def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    cache = TokenCache(10, 5.0, lambda: now[0])
    cache.set_up(True)
    record = TokenRecord(
        digest="d", client_id="c", scopes=frozenset(), issued_at=0, expires_at=10**10, jti="j"
    )
    cache.put(record, 0, cache.epoch)
    now[0] = 4.9
    assert cache.get("d") is not None
    now[0] = 5.0
    assert cache.get("d") is None


async def _down(edge: Edge) -> bool:
    return not _cache(edge).up


async def _client_token(edge: Edge, **options: Any) -> tuple[Credentials, str]:
    return await token_for(edge.channel, edge.admin_token, "recipes:read", **options)


async def _revoke(edge: Edge, client: Credentials, token: str) -> None:
    """RevokeToken (RFC 7009) on ``edge``, as the token's own client."""
    await token_service_pb2_grpc.TokenServiceStub(edge.channel).RevokeToken(
        pb.RevokeTokenRequest(
            token=token, client_id=client.client_id, client_secret=client.client_secret
        ),
        timeout=5,
    )


@pytest.mark.parametrize("revocation", ["refresh_reuse", "refresh_revoked"])
async def test_a_family_revoked_in_a_script_leaves_this_replicas_cache_at_once(
    app_factory: AppFactory,
    valkey: RedisProcess,
    monkeypatch: pytest.MonkeyPatch,
    revocation: str,
) -> None:
    """A refresh-token reuse (inside the rotation script) or the revocation of a refresh
    token (RFC 7009: its family goes too) revokes access tokens the caller never named;
    the replica that ran the script drops them from its cache itself, not only when the
    pub/sub echo arrives (the echo is switched off here, so only that path can work)."""
    async with open_flow(app_factory, valkey, token_cache={"ttl": 60}) as flow:
        cache = await hot_token_cache_in_use(flow.app)
        monkeypatch.setattr(RevocationFeed, "_handle", lambda self, message: None)
        client = await flow.client()
        issued = await flow.login(client)
        assert await flow.active(issued.access_token)
        assert digest(issued.access_token) in cache._entries  # served from the cache now
        if revocation == "refresh_reuse":
            await flow.refresh(client, issued.refresh_token)
            with pytest.raises(grpc.aio.AioRpcError, match="already used"):
                await flow.refresh(client, issued.refresh_token)
        else:
            await flow.revoke(client, issued.refresh_token)
        assert digest(issued.access_token) not in cache._entries
        assert not await flow.active(issued.access_token)


async def _list_clients(edge: Edge, token: str) -> grpc.StatusCode:
    stub = client_registry_pb2_grpc.ClientRegistryStub(edge.channel)
    try:
        await stub.ListClients(
            client_registry_pb2.ListClientsRequest(),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=5,
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_hot_callers_token_is_resolved_without_a_lookup_and_still_refused(
    replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caller authentication resolves a hot token in the interceptor (no handler wrapper,
    # no lookup): the scope check, revocation and the caller's identity still hold there.
    a, b = await replicas(count=2)
    _, reader = await a.token("read")
    assert await _list_clients(a, a.admin_token) == grpc.StatusCode.OK  # cached now
    assert await _list_clients(a, reader) == grpc.StatusCode.PERMISSION_DENIED

    with recording_round_trips(monkeypatch) as recorder, recorder.measure() as trips:
        assert await _list_clients(a, a.admin_token) == grpc.StatusCode.OK
        assert await _list_clients(a, reader) == grpc.StatusCode.PERMISSION_DENIED
    lookups = [trip for trip in trips if "hgetall" in trip]
    assert lookups == []  # both callers came from the hot-token cache
    assert digest(reader) in _cache(a)._entries

    # Revoked through the other replica: this one refuses the hot token at once.
    await token_service_pb2_grpc.TokenServiceStub(b.channel).RevokeToken(
        pb.RevokeTokenRequest(token=a.admin_token),
        metadata=[("authorization", f"Bearer {b.admin_token}")],
        timeout=5,
    )
    await eventually(lambda: _refused_unauthenticated(a, a.admin_token), timeout=1, interval=0.001)


async def _refused_unauthenticated(edge: Edge, token: str) -> bool:
    return await _list_clients(edge, token) == grpc.StatusCode.UNAUTHENTICATED
