"""Rotating the client-secret pepper (issue 7, item 8) without invalidating secrets.

Clients created under pepper A keep authenticating once B is current and A is listed in
``auth.previous_secret_peppers``; their hash is re-made under B on first use, after which
A can be dropped.
"""

from __future__ import annotations

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, Credentials, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.helpers import eventually
from tokenservice_server.app import Application
from tokenservice_server.domain.clients import ClientSpec, GrantType
from tokenservice_server.domain.credentials import SecretHasher

PEPPER_A = "pepper-A-0123456789abcdef0123456789abcdef"
PEPPER_B = "pepper-B-0123456789abcdef0123456789abcdef"
SPEC = ClientSpec(grant_types=(GrantType.CLIENT_CREDENTIALS,), scopes=("read",))


async def _token(app: Application, client: Credentials) -> str:
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        return await issue_token(channel, client)


async def _hash(app: Application, client_id: str) -> str:
    assert app.components is not None
    record = await app.components.clients.get(client_id)
    assert record is not None
    assert record.secret_hash is not None
    return record.secret_hash


async def test_secrets_survive_a_pepper_rotation_and_are_upgraded_on_use(
    valkey: RedisProcess, app_factory: AppFactory
) -> None:
    old = await app_factory(redis={"url": valkey.url}, auth={"secret_pepper": PEPPER_A})
    assert old.components is not None
    clients = []
    for name in ("used", "idle"):
        issued = await old.components.registry.create(SPEC, name)
        assert issued.secret is not None
        clients.append(Credentials(name, issued.secret))
    used, idle = clients
    await old.stop(grace=0)

    rotating = await app_factory(
        redis={"url": valkey.url},
        auth={"secret_pepper": PEPPER_B, "previous_secret_peppers": [PEPPER_A]},
    )
    assert (await _token(rotating, used)).startswith("tsat_")
    new_hasher = SecretHasher(PEPPER_B.encode())

    async def upgraded() -> bool:
        return new_hasher.is_current(used.client_secret, await _hash(rotating, used.client_id))

    await eventually(upgraded, timeout=5)
    # Still fine after the upgrade (the cached record was dropped), and wrong secrets fail.
    assert (await _token(rotating, used)).startswith("tsat_")
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await _token(rotating, Credentials(used.client_id, idle.client_secret))
    assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert not new_hasher.is_current(idle.client_secret, await _hash(rotating, idle.client_id))
    await rotating.stop(grace=0)

    # Pepper A dropped: upgraded clients work; one never seen during the rotation does not.
    final = await app_factory(redis={"url": valkey.url}, auth={"secret_pepper": PEPPER_B})
    assert (await _token(final, used)).startswith("tsat_")
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await _token(final, idle)
    assert stale.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_init_rehashes_bootstrapped_clients_under_the_current_pepper(
    valkey: RedisProcess, app_factory: AppFactory
) -> None:
    secret = "bootstrap-secret-0123456789abcdef0123456789"
    old = await app_factory(redis={"url": valkey.url}, auth={"secret_pepper": PEPPER_A})
    assert old.components is not None
    assert await old.components.registry.bootstrap("svc", SPEC, secret) == "created"
    await old.stop(grace=0)
    rotating = await app_factory(
        redis={"url": valkey.url},
        auth={"secret_pepper": PEPPER_B, "previous_secret_peppers": [PEPPER_A]},
    )
    assert rotating.components is not None
    assert await rotating.components.registry.bootstrap("svc", SPEC, secret) == "updated"
    assert await rotating.components.registry.bootstrap("svc", SPEC, secret) == "unchanged"
    assert SecretHasher(PEPPER_B.encode()).is_current(secret, await _hash(rotating, "svc"))
