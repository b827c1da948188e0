"""A grant step sent twice (redis-py resends a script when the reply is lost, e.g. the
master died between running it and answering) answers as the first run did; only a real
second use of a code or a rotated refresh token counts as reuse.

Found by the failover suite: a resent rotation was taken for a replayed refresh token and
revoked the family the caller had just extended (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.harness.grpc_server import AppFactory
from tests.harness.redis_servers import RedisProcess
from tests.integration.oauth2_support import OAuth, challenge_s256, oauth_server
from tokenservice_server.domain.rate_limiting import TokenRequestLimits
from tokenservice_server.domain.tokens import GrantResult
from tokenservice_server.storage import keys
from tokenservice_server.storage.grant_store import RedisGrantStore
from tokenservice_server.storage.scripts import ScriptRegistry

TTL = 600


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _pair() -> tuple[tuple[str, str, int], tuple[str, str, int]]:
    """(sha256, jti, ttl) of a new access and a new refresh token, as the domain makes."""
    return (
        (_sha(secrets.token_hex(16)), secrets.token_hex(8), TTL),
        (_sha(secrets.token_hex(16)), secrets.token_hex(8), TTL),
    )


@pytest.fixture
async def oauth(app_factory: AppFactory, valkey: RedisProcess) -> AsyncIterator[OAuth]:
    async with oauth_server(app_factory, valkey) as oauth:
        yield oauth


@pytest.fixture
async def redis_client(valkey: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url)
    yield client
    await client.aclose()


async def test_resent_redemption_and_rotation_answer_ok_and_revoke_nothing(
    oauth: OAuth, redis_client: Redis
) -> None:
    store = RedisGrantStore(redis_client, ScriptRegistry(redis_client))
    client = await oauth.client(scopes=("read",))
    flow = await oauth.authorize(client, scope="read")
    generation = int(await redis_client.hget(keys.client_key(client.client_id), "gen") or 0)
    limits = TokenRequestLimits(client.client_id, "", 60_000, 0, 0)
    access, refresh = _pair()

    async def redeem(access: tuple[str, str, int]) -> GrantResult:
        return await store.redeem_code(
            _sha(flow.code),
            client_id=client.client_id,
            client_generation=generation,
            redirect_uri=flow.redirect_uri,
            verifier_s256=challenge_s256(flow.verifier),
            verifier=flow.verifier,
            now=int(time.time()),
            access=access,
            refresh=refresh,
            audiences=(),
            limits=limits,
        )

    first = await redeem(access)
    assert first.status == "ok"
    assert await redeem(access) == first  # the resend
    assert await redis_client.exists(keys.access_token_key(access[0])) == 1

    async def rotate(
        presented: str, pair: tuple[tuple[str, str, int], tuple[str, str, int]]
    ) -> GrantResult:
        return await store.rotate_refresh(
            presented,
            client_id=client.client_id,
            client_generation=generation,
            scope="",
            now_ms=int(time.time() * 1000),
            grace_ms=0,
            access=pair[0],
            refresh=pair[1],
            audiences=(),
            limits=limits,
        )

    rotated_pair = _pair()
    rotated = await rotate(refresh[0], rotated_pair)
    assert rotated.status == "ok"
    assert rotated.family_id == first.family_id
    assert await rotate(refresh[0], rotated_pair) == rotated  # the resend
    # Nothing of the family was revoked by the resend: both access tokens still exist.
    for digest in (access[0], rotated_pair[0][0]):
        assert await redis_client.exists(keys.access_token_key(digest)) == 1

    # A real second use (other new tokens) is still reuse and revokes the family ...
    assert (await rotate(refresh[0], _pair())).status == "reused"
    for digest in (access[0], rotated_pair[0][0]):
        assert await redis_client.exists(keys.access_token_key(digest)) == 0
    # ... and so is a second redemption of the code.
    assert (await redeem(_pair()[0])).status == "reused"
