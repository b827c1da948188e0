"""IssueToken with client_credentials (RFC 6749 section 4.4) against a real server and a
real Valkey: the response, what Redis holds afterwards, every error with its code and
reason, one Redis round trip per token, and client changes made elsewhere taking effect
on the very next request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis

from tests.harness.grpc_server import AppFactory, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_info, error_reason
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import CredentialKind, digest, is_well_formed
from tokenservice_server.storage import keys

CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS
AUTH_CODE = token_service_pb2.GRANT_TYPE_AUTHORIZATION_CODE
CONFIDENTIAL = client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL
PUBLIC = client_registry_pb2.CLIENT_TYPE_PUBLIC


@dataclass(frozen=True)
class Registered:
    client_id: str
    client_secret: str


def _target(app: Application) -> str:
    assert app.addresses is not None
    return app.addresses.grpc_target


async def _create(
    channel: grpc.aio.Channel,
    admin_token: str,
    *,
    client_id: str = "",
    client_type: int = CONFIDENTIAL,
    grant_types: Sequence[int] = (CC,),
    scopes: Sequence[str] = ("read", "write"),
    redirect_uris: Sequence[str] = (),
    access_token_ttl: int = 0,
) -> Registered:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    response = await stub.CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_id=client_id,
                client_type=client_type,  # type: ignore[arg-type]
                allowed_grant_types=list(grant_types),  # type: ignore[arg-type]
                allowed_scopes=list(scopes),
                redirect_uris=list(redirect_uris),
                access_token_ttl_seconds=access_token_ttl,
            )
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return Registered(response.client.client_id, response.client_secret)


async def _issue(
    channel: grpc.aio.Channel,
    client: Registered | None = None,
    *,
    scope: str = "",
    **fields: Any,
) -> token_service_pb2.IssueTokenResponse:
    request: dict[str, Any] = {"grant_type": CC}
    if client is not None:
        request.update(client_id=client.client_id, client_secret=client.client_secret)
    request.update(scope=scope, **fields)
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    return await stub.IssueToken(token_service_pb2.IssueTokenRequest(**request), timeout=5)


async def _failure(channel: grpc.aio.Channel, **request: Any) -> grpc.aio.AioRpcError:
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueToken(token_service_pb2.IssueTokenRequest(**request), timeout=5)
    return caught.value


def _token_keys(sync: redis.Redis) -> list[str]:
    return sorted(sync.scan_iter("auth:access_token:*"))


def _issued_count(sync: redis.Redis) -> int:
    return int(sync.hget("auth_stats", "access_tokens_issued") or 0)


# -- the successful response and what it leaves in Redis -----------------------------------


async def test_response_and_stored_record(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> None:
    sync = valkey.client()
    client = await _create(channel, admin_token, scopes=("write", "read", "admin.x"))
    issued_before = _issued_count(sync)

    started = int(time.time())
    response = await _issue(channel, client)

    token = response.access_token
    assert token.startswith("tsat_")
    assert len(token) == 54
    assert is_well_formed(token, CredentialKind.ACCESS_TOKEN)
    assert response.token_type == "Bearer"
    assert response.expires_in == 900
    assert response.scope == "admin.x read write"  # omitted: every registered scope, sorted
    assert response.refresh_token == ""  # RFC 6749 section 4.4.3: no refresh token

    token_digest = digest(token)
    key = f"auth:access_token:{token_digest}"
    assert sync.type(key) == "hash"
    assert 890 <= sync.ttl(key) <= 900
    stored = sync.hgetall(key)
    assert stored["c"] == client.client_id
    assert stored["s"] == "admin.x read write"
    issued_at, expires_at = int(stored["i"]), int(stored["e"])
    assert started <= issued_at <= int(time.time())
    assert expires_at == issued_at + 900
    # Indexed compactly: 'A' + the raw digest; its cleanup entry names its index sets.
    member = keys.compact_access_member(token_digest)
    entry = keys.access_cleanup_entry(token_digest, client.client_id)
    assert entry == member + f"|{client.client_id}|||".encode()
    assert sync.zscore("auth_token_cleanup", entry) == expires_at
    assert sync.zscore("auth_token_cleanup", f"a:{token_digest}") is None
    assert sync.zcard("auth_index_cleanup") == 0  # the entry above is the only one
    assert sync.sismember(f"auth:client_tokens:{client.client_id}", member)
    assert "j" not in stored  # the jti is derived from the digest, not stored
    assert sync.ttl(f"auth:client_tokens:{client.client_id}") >= 890
    assert _issued_count(sync) == issued_before + 1

    again = await _issue(channel, client, scope="write read")
    assert again.scope == "read write"
    assert again.access_token != token
    assert sync.hget(f"auth:access_token:{digest(again.access_token)}", "s") == "read write"
    assert sync.scard(f"auth:client_tokens:{client.client_id}") == 2
    assert _issued_count(sync) == issued_before + 2
    # Scopes are a set: order and repetition carry no meaning.
    assert (await _issue(channel, client, scope="write admin.x write")).scope == "admin.x write"


async def test_per_client_ttl_override(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> None:
    sync = valkey.client()
    client = await _create(channel, admin_token, access_token_ttl=120)

    response = await _issue(channel, client)

    assert response.expires_in == 120
    key = f"auth:access_token:{digest(response.access_token)}"
    assert 115 <= sync.ttl(key) <= 120
    stored = sync.hgetall(key)
    assert int(stored["e"]) - int(stored["i"]) == 120
    entry = keys.access_cleanup_entry(digest(response.access_token), client.client_id)
    assert sync.zscore("auth_token_cleanup", entry) == int(stored["e"])


async def test_server_default_ttl_comes_from_settings(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    app = await app_factory(redis={"url": valkey.url}, auth={"access_token_ttl": 300})
    admin = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(_target(app)) as channel:
        token = await issue_token(channel, admin)
        default = await _create(channel, token)
        override = await _create(channel, token, access_token_ttl=60)
        assert (await _issue(channel, default)).expires_in == 300
        assert (await _issue(channel, override)).expires_in == 60


# -- errors: code, reason, field, and nothing written ---------------------------------------


@dataclass(frozen=True)
class Fixture:
    cc: Registered
    other: Registered
    code_only: Registered
    public: Registered


@pytest.fixture
async def clients(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> AsyncIterator[Fixture]:
    registered = Fixture(
        cc=await _create(channel, admin_token, scopes=("read", "write")),
        other=await _create(channel, admin_token, scopes=("read",)),
        code_only=await _create(
            channel,
            admin_token,
            grant_types=(AUTH_CODE,),
            redirect_uris=("https://app.example/callback",),
        ),
        public=await _create(
            channel,
            admin_token,
            client_type=PUBLIC,
            grant_types=(AUTH_CODE,),
            redirect_uris=("http://127.0.0.1/callback",),
        ),
    )
    sync = valkey.client()
    # The admin token is the only one; failures below must not add any.
    keys_before, issued_before = _token_keys(sync), _issued_count(sync)
    assert len(keys_before) == 1
    yield registered
    assert _token_keys(sync) == keys_before, "a failed IssueToken wrote a token"
    assert _issued_count(sync) == issued_before


def _check(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str) -> None:
    assert error.code() is code, (error.code(), error.details(), error.debug_error_string())
    assert error_reason(error) == reason, error.details()
    info = error_info(error)
    assert info is not None
    assert info.domain == "tokenservice"


async def test_wrong_secret_and_unknown_client_are_indistinguishable(
    channel: grpc.aio.Channel, clients: Fixture
) -> None:
    wrong = await _failure(
        channel, grant_type=CC, client_id=clients.cc.client_id, client_secret="not-the-secret"
    )
    other_secret = await _failure(
        channel,
        grant_type=CC,
        client_id=clients.cc.client_id,
        client_secret=clients.other.client_secret,
    )
    unknown = await _failure(
        channel, grant_type=CC, client_id="no-such-client", client_secret=clients.cc.client_secret
    )
    for error in (wrong, other_secret, unknown):
        _check(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert wrong.details() == unknown.details() == other_secret.details()
    info_wrong, info_unknown = error_info(wrong), error_info(unknown)
    assert info_wrong is not None
    assert info_unknown is not None
    assert dict(info_wrong.metadata) == dict(info_unknown.metadata) == {}


def _altered(secret: str) -> str:
    """The secret with its last character changed (to another one, always)."""
    return secret[:-1] + ("y" if secret.endswith("x") else "x")


async def test_request_and_client_authentication_errors(
    channel: grpc.aio.Channel, clients: Fixture
) -> None:
    missing_id = await _failure(channel, grant_type=CC, client_secret=clients.cc.client_secret)
    _check(missing_id, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    info = error_info(missing_id)
    assert info is not None
    assert info.metadata["field"] == "client_id"

    invalid_client = [
        # a confidential client without its secret
        {"client_id": clients.cc.client_id},
        # a secret of the right length but wrong, and one at the field length limit
        {"client_id": clients.cc.client_id, "client_secret": _altered(clients.cc.client_secret)},
        {"client_id": clients.cc.client_id, "client_secret": "x" * 4096},
        # RFC 6749 section 4.4: client_credentials is for confidential clients only
        {"client_id": clients.public.client_id},
        {"client_id": clients.public.client_id, "client_secret": clients.cc.client_secret},
        # authentication comes first: without the secret nothing about its grants is told
        {"client_id": clients.code_only.client_id, "client_secret": "x"},
    ]
    for request in invalid_client:
        error = await _failure(channel, grant_type=CC, **request)
        _check(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    # Authenticated, but registered only for authorization_code.
    error = await _failure(
        channel,
        grant_type=CC,
        client_id=clients.code_only.client_id,
        client_secret=clients.code_only.client_secret,
    )
    _check(error, grpc.StatusCode.PERMISSION_DENIED, "UNAUTHORIZED_CLIENT")


_SCOPES_NOT_REGISTERED = [
    "admin",  # not registered
    "read admin",  # partly registered
    "READ",  # scopes are case-sensitive
    "tokenservice.admin",
]
_MALFORMED_SCOPES = [
    "read\twrite",
    'read "write"',
    "read\\",
    "read  write",
    " read",
    "read ",
    "réad",
    "read\nwrite",
    "read\x00",
    "x" * 129,
    " ".join(f"s{n}" for n in range(101)),
]


async def test_scope_errors(channel: grpc.aio.Channel, clients: Fixture) -> None:
    for scope in _SCOPES_NOT_REGISTERED + _MALFORMED_SCOPES:
        error = await _failure(
            channel,
            grant_type=CC,
            client_id=clients.cc.client_id,
            client_secret=clients.cc.client_secret,
            scope=scope,
        )
        _check(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE")
        info = error_info(error)
        assert info is not None, scope
        assert info.metadata["field"] == "scope", scope


_BOUNDED_FIELDS = [
    "client_id",
    "client_secret",
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
]


async def test_grant_type_and_field_length_errors(
    channel: grpc.aio.Channel, clients: Fixture
) -> None:
    for grant_type in (token_service_pb2.GRANT_TYPE_UNSPECIFIED, 99):
        error = await _failure(
            channel,
            grant_type=grant_type,
            client_id=clients.cc.client_id,
            client_secret=clients.cc.client_secret,
        )
        _check(error, grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_GRANT_TYPE")
        info = error_info(error)
        assert info is not None
        assert info.metadata["field"] == "grant_type"

    for field in _BOUNDED_FIELDS:
        request: dict[str, Any] = {
            "grant_type": CC,
            "client_id": clients.cc.client_id,
            "client_secret": clients.cc.client_secret,
            field: "x" * 4097,
        }
        error = await _failure(channel, **request)
        _check(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        info = error_info(error)
        assert info is not None, field
        assert info.metadata["field"] == field
        assert info.metadata["limit"] == "4096"


# -- one Redis round trip -----------------------------------------------------------------

# What issue_access_token.lua runs inside the one EVALSHA (EXPIRE of the per-client index
# only when its TTL would otherwise end before the new token's).
# Inside the one script: the generation check, the rate limiter (the client's override,
# server TIME, and the client's and the peer IP's GCRA buckets), then the token writes.
_SCRIPT_COMMANDS = {
    "hget": 2,
    "time": 1,
    "get": 2,
    "set": 2,
    "hset": 1,
    "sadd": 1,
    "ttl": 1,
    "zadd": 1,  # auth_token_cleanup (its entry names the index sets, for the cleanup job)
    "hincrby": 1,
}
# Our own observer's INFO and the health probe's PING are not the token endpoint's.
_NOT_OURS = ("info", "ping")


def _command_calls(sync: redis.Redis) -> Counter[str]:
    stats = sync.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}
    )


def _commands_during(sync: redis.Redis, before: Counter[str]) -> Counter[str]:
    delta = _command_calls(sync) - before
    for name in _NOT_OURS:
        delta.pop(name, None)
    return delta


async def test_issuing_with_a_warm_client_cache_is_one_redis_command(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    # A long health interval keeps the probe's PINGs out of the window (they are
    # excluded from the count as well).
    app = await app_factory(redis={"url": valkey.url}, health_interval=60)
    admin = await bootstrap_admin(app)
    sync = valkey.client()
    async with grpc.aio.insecure_channel(_target(app)) as channel:
        client = await _create(channel, await issue_token(channel, admin))
        await _issue(channel, client)  # warms the client cache and loads the script
        for _ in range(3):
            before = _command_calls(sync)
            await _issue(channel, client, scope="read")
            delta = _commands_during(sync, before)
            # Issue 3: issuing is one Redis round trip, one Lua script.
            assert delta["evalsha"] == 1, f"IssueToken ran {delta['evalsha']} scripts: {delta}"
            expire = delta.pop("expire", 0)
            assert delta == Counter({"evalsha": 1, **_SCRIPT_COMMANDS}), delta
            assert 1 <= expire <= 2

        # A cold cache costs one read of the client record, and nothing else.
        assert app.components is not None
        app.components.client_credentials._directory.forget(client.client_id)
        before = _command_calls(sync)
        await _issue(channel, client)
        delta = _commands_during(sync, before)
        delta.pop("expire", None)
        assert delta == Counter({"hgetall": 1, "evalsha": 1, **_SCRIPT_COMMANDS}), delta


# -- changes made elsewhere take effect on the very next request ---------------------------


@pytest.fixture
async def two_replicas(
    app_factory: AppFactory, valkey: RedisProcess
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel, str]]:
    """Two servers on one Valkey, each with its own client cache; and an admin token."""
    first = await app_factory(redis={"url": valkey.url})
    second = await app_factory(redis={"url": valkey.url})
    admin = await bootstrap_admin(first)
    async with (
        grpc.aio.insecure_channel(_target(first)) as one,
        grpc.aio.insecure_channel(_target(second)) as two,
    ):
        yield one, two, await issue_token(one, admin)


async def _rotate(
    channel: grpc.aio.Channel, admin_token: str, client_id: str, grace: int = 0
) -> str:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    response = await stub.RotateClientSecret(
        client_registry_pb2.RotateClientSecretRequest(
            client_id=client_id, previous_secret_grace_seconds=grace
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return str(response.client_secret)


async def _update(
    channel: grpc.aio.Channel, admin_token: str, client: client_registry_pb2.Client, *paths: str
) -> None:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    await stub.UpdateClient(
        client_registry_pb2.UpdateClientRequest(client=client, update_mask={"paths": paths}),
        metadata=bearer(admin_token),
        timeout=5,
    )


async def test_rotated_secret_takes_effect_at_once_on_the_same_server(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    client = await _create(channel, admin_token)
    await _issue(channel, client)  # warm cache

    new_secret = await _rotate(channel, admin_token, client.client_id)

    error = await _failure(
        channel, grant_type=CC, client_id=client.client_id, client_secret=client.client_secret
    )
    _check(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    await _issue(channel, Registered(client.client_id, new_secret))


async def test_rotation_on_another_replica_takes_effect_at_once(
    two_replicas: tuple[grpc.aio.Channel, grpc.aio.Channel, str],
) -> None:
    one, two, admin_token = two_replicas
    client = await _create(one, admin_token)
    await _issue(two, client)  # replica two now holds the client in its cache

    new_secret = await _rotate(one, admin_token, client.client_id)

    # The old secret is refused by the generation check of the issuing script ...
    error = await _failure(
        two, grant_type=CC, client_id=client.client_id, client_secret=client.client_secret
    )
    _check(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    # ... and the new one is accepted although replica two's cached copy predates it.
    await _issue(two, Registered(client.client_id, new_secret))

    # Another rotation, new secret first this time (the cache holds the previous one).
    newest = await _rotate(one, admin_token, client.client_id, grace=60)
    await _issue(two, Registered(client.client_id, newest))
    await _issue(two, Registered(client.client_id, new_secret))  # within its grace period


async def test_registration_changes_on_another_replica_take_effect_at_once(
    two_replicas: tuple[grpc.aio.Channel, grpc.aio.Channel, str],
) -> None:
    one, two, admin_token = two_replicas
    client = await _create(one, admin_token, scopes=("read",))
    await _issue(two, client)  # warm cache on replica two

    await _update(
        one,
        admin_token,
        client_registry_pb2.Client(
            client_id=client.client_id,
            allowed_scopes=["read", "write"],
            access_token_ttl_seconds=60,
        ),
        "allowed_scopes",
        "access_token_ttl_seconds",
    )
    widened = await _issue(two, client, scope="write")
    assert widened.scope == "write"
    assert widened.expires_in == 60

    await _update(
        one,
        admin_token,
        client_registry_pb2.Client(
            client_id=client.client_id,
            allowed_grant_types=[AUTH_CODE],
            redirect_uris=["https://app.example/callback"],
        ),
        "allowed_grant_types",
        "redirect_uris",
    )
    error = await _failure(
        two, grant_type=CC, client_id=client.client_id, client_secret=client.client_secret
    )
    _check(error, grpc.StatusCode.PERMISSION_DENIED, "UNAUTHORIZED_CLIENT")


async def test_client_deleted_behind_the_servers_back_is_refused_at_once(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> None:
    sync = valkey.client()
    client = await _create(channel, admin_token)
    await _issue(channel, client)  # warm cache
    keys_before = _token_keys(sync)

    # Another replica (or an operator) removes the record; this server's cache still has it.
    assert sync.delete(f"auth:client:{client.client_id}") == 1

    error = await _failure(
        channel, grant_type=CC, client_id=client.client_id, client_secret=client.client_secret
    )
    _check(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert _token_keys(sync) == keys_before


async def test_concurrent_issuing_gives_distinct_tokens(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> None:
    client = await _create(channel, admin_token)
    # 40 (plus the admin's token) stays below the default per-IP token endpoint limit.
    responses = await asyncio.gather(*(_issue(channel, client) for _ in range(40)))
    tokens = {response.access_token for response in responses}
    assert len(tokens) == 40
    sync = valkey.client()
    assert sync.scard(f"auth:client_tokens:{client.client_id}") == 40
    assert sync.zcard("auth_token_cleanup") == 41
