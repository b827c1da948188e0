"""Redis memory per live access token (issue 9 target: <= 400 bytes, index entries
included, measured with MEMORY USAGE), and the compact index layout that meets it still
reading what earlier releases wrote (``a:<hex>`` members, ``auth_index_cleanup``)."""

from __future__ import annotations

import asyncio
import time

import grpc
import redis

from tests.harness.grpc_server import AppFactory, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential
from tokenservice_server.domain.tokens import TokenKind, derived_jti
from tokenservice_server.storage import keys

TOKENS = 2_000
BUDGET = 400  # bytes per live access token, its index entries included
CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS
NO_TOKEN_LIMITS = {"token_per_ip": 0, "token_per_client": 0}


async def _service_client(app: Application, channel: grpc.aio.Channel) -> tuple[str, str]:
    admin_token = await issue_token(channel, await bootstrap_admin(app))
    response = await client_registry_pb2_grpc.ClientRegistryStub(channel).CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                allowed_grant_types=[CC],
                allowed_scopes=["orders:read", "orders:write"],
            )
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return response.client.client_id, response.client_secret


def _memory(sync: redis.Redis) -> dict[str, int]:
    """MEMORY USAGE of every key of the auth DB (SAMPLES 0: every element counted)."""
    names = list(sync.scan_iter(count=1000))
    with sync.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes = pipe.execute()
    return {name: int(size) for name, size in zip(names, sizes, strict=True) if size}


async def test_a_live_client_credentials_token_costs_at_most_400_bytes(
    valkey: RedisProcess, app_factory: AppFactory
) -> None:
    app = await app_factory(redis={"url": valkey.url}, rate_limit=NO_TOKEN_LIMITS)
    assert app.addresses is not None
    sync = valkey.client()
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        client_id, secret = await _service_client(app, channel)
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        request = token_service_pb2.IssueTokenRequest(
            grant_type=CC, client_id=client_id, client_secret=secret, scope="orders:read"
        )
        # One token first: the client's index set and the per-client rate-limit and
        # client-cache state exist before the measurement starts.
        await stub.IssueToken(request, timeout=5)
        before = _memory(sync)
        gate = asyncio.Semaphore(32)

        async def issue() -> str:
            async with gate:
                return str((await stub.IssueToken(request, timeout=10)).access_token)

        tokens = await asyncio.gather(*(issue() for _ in range(TOKENS)))
        after = _memory(sync)

    assert len(set(tokens)) == TOKENS
    records = {keys.access_token_key(digest(token)) for token in tokens}
    assert records <= after.keys()
    # Every byte any key gained counts: the records, and the growth of every other key
    # (auth_token_cleanup, auth:client_tokens:<client>, counters...).
    added = {name: after[name] - before.get(name, 0) for name in after}
    growth = {name: size for name, size in added.items() if name not in records and size}
    total = sum(after[name] for name in records) + sum(growth.values())
    per_token = total / TOKENS
    print(f"\nbytes per live access token: {per_token:.1f} ({growth=})")
    assert per_token <= BUDGET, (per_token, growth)
    # The two index structures are where the rest goes; no per-token key besides the record.
    assert set(growth) <= {keys.TOKEN_CLEANUP, keys.client_tokens_key(client_id), keys.AUTH_STATS}
    assert len(after) - len(before) == TOKENS
    assert sync.zcard(keys.INDEX_CLEANUP) == 0  # an access token's entry is its cleanup member


def _legacy_token(sync: redis.Redis, client_id: str, ttl: int = 900) -> str:
    """An access token stored the way data model 1 first did: 'a:<hex>' members in its index
    set and in auth_token_cleanup, its entry in auth_index_cleanup, a stored jti."""
    token = new_credential(CredentialKind.ACCESS_TOKEN)
    hexdigest, now = digest(token), int(time.time())
    member = keys.access_token_member(hexdigest)
    key = keys.access_token_key(hexdigest)
    fields = {"c": client_id, "s": "orders:read", "i": now, "e": now + ttl, "j": "0123abcd"}
    sync.hset(key, mapping=fields)  # type: ignore[arg-type]
    sync.expire(key, ttl)
    sync.sadd(keys.client_tokens_key(client_id), member)
    sync.expire(keys.client_tokens_key(client_id), ttl)
    sync.zadd(keys.TOKEN_CLEANUP, {member: now + ttl})
    sync.zadd(keys.INDEX_CLEANUP, {f"{member}|{client_id}|||": now + ttl})
    return token


async def test_tokens_stored_in_the_earlier_layout_stay_valid_and_revocable(
    valkey: RedisProcess, app_factory: AppFactory
) -> None:
    app = await app_factory(redis={"url": valkey.url})
    assert app.addresses is not None
    assert app.components is not None
    store = app.components.tokens
    sync = valkey.client()
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        client_id, secret = await _service_client(app, channel)
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        request = token_service_pb2.IssueTokenRequest(
            grant_type=CC, client_id=client_id, client_secret=secret
        )
        new = str((await stub.IssueToken(request, timeout=5)).access_token)
    old, old_revoked = _legacy_token(sync, client_id), _legacy_token(sync, client_id)
    index = keys.client_tokens_key(client_id)
    assert sync.scard(index) == 3
    assert (await store.statistics())["active_access_tokens"] == 4  # and the admin's

    # Both forms read: the stored jti of the old record, the derived one of the new.
    found_old = await store.find_token(TokenKind.ACCESS, digest(old))
    found_new = await store.find_token(TokenKind.ACCESS, digest(new))
    assert found_old is not None
    assert found_old.jti == "0123abcd"
    assert found_new is not None
    assert found_new.jti == derived_jti(digest(new))

    # RevokeToken's path with an old-layout token: record, live count and member go.
    assert await store.revoke_token(client_id, TokenKind.ACCESS, digest(old_revoked)) == 1
    assert sync.exists(keys.blacklist_key(digest(old_revoked)))
    assert sync.zscore(keys.TOKEN_CLEANUP, keys.access_token_member(digest(old_revoked))) is None
    assert not sync.sismember(index, keys.access_token_member(digest(old_revoked)))
    assert (await store.statistics())["active_access_tokens"] == 3

    # Revoking the client's index reaches tokens of both layouts.
    assert await store.revoke_client_tokens(client_id) == 2
    for token in (old, new):
        assert await store.find_token(TokenKind.ACCESS, digest(token)) is None
        assert sync.exists(keys.blacklist_key(digest(token)))
    assert not sync.exists(index)
    assert (await store.statistics())["active_access_tokens"] == 1  # the admin's
