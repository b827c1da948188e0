"""Caller authorization, in one place for the whole server: bearer tokens in the
``authorization`` metadata (RFC 6750 section 2.1) resolved to the calling client, admin
RPCs needing scope ``tokenservice.admin``, public RPCs open, and the per-RPC log naming
the caller but never a credential."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness.grpc_server import (
    TEST_DEFAULTS,
    AppFactory,
    Credentials,
    bearer,
    bootstrap_admin,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tests.helpers import eventually, free_port, tool
from tokenservice.client import error_reason
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential

CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS
Metadata = Sequence[tuple[str, str]]


def _target(app: Application) -> str:
    assert app.addresses is not None
    return app.addresses.grpc_target


async def _create(
    channel: grpc.aio.Channel,
    admin_token: str,
    *,
    scopes: Sequence[str] = ("read",),
    access_token_ttl: int = 0,
) -> Credentials:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    response = await stub.CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                allowed_grant_types=[CC],
                allowed_scopes=list(scopes),
                access_token_ttl_seconds=access_token_ttl,
            )
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return Credentials(response.client.client_id, response.client_secret)


async def _list_clients(
    channel: grpc.aio.Channel, metadata: Metadata | None = None
) -> client_registry_pb2.ListClientsResponse:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    return await stub.ListClients(
        client_registry_pb2.ListClientsRequest(), metadata=metadata, timeout=5
    )


async def _refused(
    channel: grpc.aio.Channel, metadata: Metadata | None, code: grpc.StatusCode, reason: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_clients(channel, metadata)
    error = caught.value
    assert error.code() is code, (metadata, error.code(), error.details())
    assert error_reason(error) == reason, (metadata, error.details())
    return error


def _flip(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


# -- which credentials are accepted --------------------------------------------------------


async def test_admin_rpc_without_credentials_is_unauthenticated(
    server: Application, channel: grpc.aio.Channel
) -> None:
    await _refused(channel, None, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    await _refused(channel, (("x-other", "1"),), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    # An empty header carries no credentials either.
    await _refused(
        channel, (("authorization", ""),), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )


async def test_other_schemes_and_shapes_are_invalid_tokens(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    for value in [
        "Basic dGVzdC1hZG1pbjpzZWNyZXQ=",
        f"Basic {admin_token}",
        f"Token {admin_token}",
        "Bearer",
        "Bearer ",
        admin_token,  # no scheme
        f"Bearer {admin_token} extra",
        f"Bearer {admin_token}x",
        f"Bearer {admin_token[:-1]}",
        f"Bearer {new_credential(CredentialKind.CLIENT_SECRET)}",  # right shape, wrong kind
        f"Bearer {new_credential(CredentialKind.REFRESH_TOKEN)}",
    ]:
        await _refused(
            channel,
            (("authorization", value),),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )


async def test_the_scheme_is_case_insensitive(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        response = await _list_clients(channel, (("authorization", f"{scheme} {admin_token}"),))
        assert any(client.client_id == "test-admin" for client in response.clients)


async def test_valid_admin_token_is_accepted(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    response = await _list_clients(channel, bearer(admin_token))
    assert [client.client_id for client in response.clients] == ["test-admin"]


async def test_non_admin_token_is_permission_denied(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    client = await _create(channel, admin_token, scopes=("read", "tokenservice.introspect"))
    token = await issue_token(channel, client)
    error = await _refused(
        channel, bearer(token), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    assert "tokenservice.admin" in str(error.details())

    # Every ClientRegistry RPC is closed to it, not only ListClients.
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    calls = [
        stub.GetClient(
            client_registry_pb2.GetClientRequest(client_id=client.client_id),
            metadata=bearer(token),
        ),
        stub.RotateClientSecret(
            client_registry_pb2.RotateClientSecretRequest(client_id=client.client_id),
            metadata=bearer(token),
        ),
        stub.DeleteClient(
            client_registry_pb2.DeleteClientRequest(client_id=client.client_id),
            metadata=bearer(token),
        ),
        stub.CreateClient(client_registry_pb2.CreateClientRequest(), metadata=bearer(token)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(caught.value) == "PERMISSION_DENIED"
    assert (
        await stub.GetClient(
            client_registry_pb2.GetClientRequest(client_id=client.client_id),
            metadata=bearer(admin_token),
        )
    ).client.client_id == client.client_id


async def test_a_token_narrowed_below_admin_is_permission_denied(
    server: Application, channel: grpc.aio.Channel, admin_credentials: Credentials
) -> None:
    # The admin client itself, but a token issued for fewer scopes.
    token = await issue_token(channel, admin_credentials, scope="tokenservice.introspect")
    await _refused(channel, bearer(token), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_expired_tokens_are_invalid(
    server: Application, channel: grpc.aio.Channel, admin_token: str, valkey: RedisProcess
) -> None:
    short = await _create(channel, admin_token, scopes=("tokenservice.admin",), access_token_ttl=2)
    issued_at = time.monotonic()
    first = await issue_token(channel, short)
    second = await issue_token(channel, short)
    await _list_clients(channel, bearer(first))  # valid while fresh
    # Keep one record in Redis past its expiry: the server must check the expiry
    # itself, not rely on Redis having deleted the key.
    sync = valkey.client()
    assert sync.persist(f"auth:access_token:{digest(second)}")

    await asyncio.sleep(max(0.0, 2.2 - (time.monotonic() - issued_at)))

    for token in (first, second):
        await _refused(channel, bearer(token), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_tokens_of_a_deleted_client_are_invalid(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    doomed = await _create(channel, admin_token, scopes=("tokenservice.admin",))
    token = await issue_token(channel, doomed)
    await _list_clients(channel, bearer(token))

    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    deleted = await stub.DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=doomed.client_id),
        metadata=bearer(admin_token),
    )
    assert deleted.revoked_token_count == 1

    await _refused(channel, bearer(token), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_unknown_well_formed_token_is_invalid(
    server: Application, channel: grpc.aio.Channel
) -> None:
    token = new_credential(CredentialKind.ACCESS_TOKEN)
    await _refused(channel, bearer(token), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


# -- malformed tokens never reach Redis ----------------------------------------------------


def _command_calls(sync: redis.Redis) -> Counter[str]:
    stats = sync.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}
    )


def _commands_since(sync: redis.Redis, before: Counter[str]) -> Counter[str]:
    delta = _command_calls(sync) - before
    delta.pop("info", None)  # our own observation
    delta.pop("ping", None)  # the health probe's
    return delta


async def test_malformed_tokens_are_rejected_without_a_redis_command(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    app = await app_factory(redis={"url": valkey.url}, health_interval=60)
    admin = await bootstrap_admin(app)
    sync = valkey.client()
    async with grpc.aio.insecure_channel(_target(app)) as channel:
        token = await issue_token(channel, admin)
        await _list_clients(channel, bearer(token))

        malformed = [_flip(token, index) for index in range(5, len(token))]
        malformed += [token[:-1], token + "A", "tsat_short", "x" * 54]
        before = _command_calls(sync)
        for value in malformed:
            await _refused(channel, bearer(value), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
        assert _commands_since(sync, before) == Counter()

        # Positive control: a well-formed token is looked up (one script: its record read,
        # absent, so its revocation marker is not).
        before = _command_calls(sync)
        await _refused(
            channel,
            bearer(new_credential(CredentialKind.ACCESS_TOKEN)),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )
        assert _commands_since(sync, before) == Counter({"evalsha": 1, "hmget": 1})


# -- public RPCs ---------------------------------------------------------------------------


async def test_public_rpcs_need_no_token(
    server: Application, channel: grpc.aio.Channel, admin_credentials: Credentials
) -> None:
    token = await issue_token(channel, admin_credentials)  # IssueToken: no metadata at all
    assert token.startswith("tsat_")

    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    answer = await health.Check(
        health_pb2.HealthCheckRequest(service="tokenservice.v1.TokenService"), timeout=5
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names: set[str] = set()
    async for response in responses:
        names.update(service.name for service in response.list_services_response.service)
    assert {"tokenservice.v1.TokenService", "tokenservice.v1.ClientRegistry"} <= names


async def test_issue_token_ignores_authorization_metadata(
    server: Application, channel: grpc.aio.Channel, admin_credentials: Credentials
) -> None:
    expired_looking = new_credential(CredentialKind.ACCESS_TOKEN)
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    request = token_service_pb2.IssueTokenRequest(
        grant_type=CC,
        client_id=admin_credentials.client_id,
        client_secret=admin_credentials.client_secret,
    )
    for value in (f"Bearer {expired_looking}", "Bearer not-a-token", "Basic eDp5"):
        response = await stub.IssueToken(request, metadata=(("authorization", value),), timeout=5)
        assert response.access_token.startswith("tsat_")


# -- the per-RPC log names the caller, never a credential ----------------------------------


def _env(valkey: RedisProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    env.update(
        TOKENSERVICE_LOG_FORMAT="json",
        TOKENSERVICE_REDIS__URL=valkey.url,
        TOKENSERVICE_AUTH__SECRET_PEPPER=TEST_DEFAULTS["auth"]["secret_pepper"],
    )
    return env


async def _serving(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _events(output: bytes) -> list[dict[str, Any]]:
    events = []
    for line in output.decode().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def test_rpc_log_names_the_caller_and_never_a_credential(
    server: Application, admin_credentials: Credentials, valkey: RedisProcess, tmp_path: Path
) -> None:
    # `tokenservice serve` as operators run it, on the Valkey the admin was bootstrapped in.
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        tool("tokenservice"),
        "serve",
        "--listen",
        target,
        "--metrics-listen",
        "127.0.0.1:0",
        env=_env(valkey),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    credentials: list[str] = [admin_credentials.client_secret]
    try:
        await eventually(lambda: _serving(target), timeout=30, interval=0.1)
        async with grpc.aio.insecure_channel(target) as channel:
            admin_token = await issue_token(channel, admin_credentials)
            client = await _create(channel, admin_token)
            client_token = await issue_token(channel, client)
            credentials += [admin_token, client.client_secret, client_token]

            await _list_clients(channel, bearer(admin_token))
            await _refused(
                channel,
                bearer(client_token),
                grpc.StatusCode.PERMISSION_DENIED,
                "PERMISSION_DENIED",
            )
            unknown = new_credential(CredentialKind.ACCESS_TOKEN)
            malformed = _flip(admin_token, 20)
            for value in (unknown, malformed):
                await _refused(
                    channel, bearer(value), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"
                )
            wrong_secret = new_credential(CredentialKind.CLIENT_SECRET)
            with pytest.raises(grpc.aio.AioRpcError):
                await issue_token(channel, Credentials(client.client_id, wrong_secret))
            rotated = await client_registry_pb2_grpc.ClientRegistryStub(channel).RotateClientSecret(
                client_registry_pb2.RotateClientSecretRequest(client_id=client.client_id),
                metadata=bearer(admin_token),
                timeout=5,
            )
            credentials += [unknown, malformed, wrong_secret, rotated.client_secret]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    output = stdout + stderr

    text = output.decode()
    for secret in credentials:
        assert secret not in text
        assert secret[5:-6] not in text  # not even the random body without prefix/check

    rpcs = [event for event in _events(output) if event.get("event") == "rpc"]

    def calls(method: str, code: str) -> list[dict[str, Any]]:
        return [
            event
            for event in rpcs
            if event["method"] == f"/tokenservice.v1.{method}" and event["code"] == code
        ]

    for event in calls("ClientRegistry/CreateClient", "OK"):
        assert event["client_id"] == admin_credentials.client_id
    (listed,) = calls("ClientRegistry/ListClients", "OK")
    assert listed["client_id"] == admin_credentials.client_id
    (denied,) = calls("ClientRegistry/ListClients", "PERMISSION_DENIED")
    assert denied["client_id"] == client.client_id
    unauthenticated = calls("ClientRegistry/ListClients", "UNAUTHENTICATED")
    assert len(unauthenticated) == 2
    assert all("client_id" not in event for event in unauthenticated)
    assert calls("ClientRegistry/RotateClientSecret", "OK")[0]["client_id"] == (
        admin_credentials.client_id
    )
    assert len(calls("TokenService/IssueToken", "OK")) == 2
    assert len(calls("TokenService/IssueToken", "UNAUTHENTICATED")) == 1
