"""The audit trail (issue 7, item 8): every administrative action, successful or not, is
one structured log event and one entry of the bounded ``auth_audit`` stream, readable with
``tokenservice audit``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import field_mask_pb2

from tests.harness.grpc_server import (
    TEST_DEFAULTS,
    AppFactory,
    Credentials,
    bearer,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tests.helpers import tool
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.audit import AuditEvent
from tokenservice_server.storage import keys
from tokenservice_server.storage.audit_store import RedisAuditStore

CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS


async def _create_client(
    registry: client_registry_pb2_grpc.ClientRegistryStub, meta: Any, client_id: str
) -> client_registry_pb2.CreateClientResponse:
    return await registry.CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_id=client_id,
                client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                allowed_grant_types=[CC],
                allowed_scopes=["read"],
            )
        ),
        metadata=meta,
        timeout=5,
    )


async def _admin_actions(channel: grpc.aio.Channel, token: str) -> str:
    """One of every audited action, plus failures; returns the created client's id."""
    registry = client_registry_pb2_grpc.ClientRegistryStub(channel)
    tokens = token_service_pb2_grpc.TokenServiceStub(channel)
    meta = bearer(token)
    created = await _create_client(registry, meta, "audited")
    client_id = created.client.client_id
    await registry.UpdateClient(
        client_registry_pb2.UpdateClientRequest(
            client=client_registry_pb2.Client(client_id=client_id, display_name="Audited"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=meta,
        timeout=5,
    )
    await registry.RotateClientSecret(
        client_registry_pb2.RotateClientSecretRequest(
            client_id=client_id, previous_secret_grace_seconds=60
        ),
        metadata=meta,
        timeout=5,
    )
    session = await tokens.CreateSession(
        token_service_pb2.CreateSessionRequest(
            session=token_service_pb2.Session(subject="alice", client_id=client_id)
        ),
        metadata=meta,
        timeout=5,
    )
    await tokens.EndSession(
        token_service_pb2.EndSessionRequest(session_id=session.session.session_id),
        metadata=meta,
        timeout=5,
    )
    await tokens.RevokeTokens(
        token_service_pb2.RevokeTokensRequest(subject="alice"), metadata=meta, timeout=5
    )
    await tokens.RevokeTokens(
        token_service_pb2.RevokeTokensRequest(client_id=client_id), metadata=meta, timeout=5
    )
    await registry.DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=client_id), metadata=meta, timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:  # a failure is audited too
        await registry.DeleteClient(
            client_registry_pb2.DeleteClientRequest(client_id=client_id),
            metadata=meta,
            timeout=5,
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError):
        await registry.CreateClient(
            client_registry_pb2.CreateClientRequest(), metadata=meta, timeout=5
        )
    return client_id


EXPECTED = [  # (action, target, outcome, reason), oldest first
    ("client.create", "client:audited", "ok", ""),
    ("client.update", "client:audited", "ok", ""),
    ("client.rotate_secret", "client:audited", "ok", ""),
    ("session.end", None, "ok", ""),
    ("tokens.revoke", "subject:alice", "ok", ""),
    ("tokens.revoke", "client:audited", "ok", ""),
    ("client.delete", "client:audited", "ok", ""),
    ("client.delete", "client:audited", "failed", "NOT_FOUND"),
    ("client.create", "client:", "failed", "INVALID_REQUEST"),
]


def _matches(events: Sequence[AuditEvent | Mapping[str, Any]]) -> None:
    assert len(events) == len(EXPECTED)
    for event, (action, target, outcome, reason) in zip(events, EXPECTED, strict=True):
        fields: Mapping[str, Any] = event.fields() if isinstance(event, AuditEvent) else event
        assert fields["action"] == action
        if target is not None:
            assert fields["target"] == target
        else:
            assert fields["target"].startswith("session:")
        assert fields["outcome"] == outcome
        assert fields["reason"] == reason
        assert fields["actor"] == "test-admin"
        assert fields["request_id"]
        assert float(fields["time"]) > 0


def _cli(valkey: RedisProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    env["TOKENSERVICE_AUTH__SECRET_PEPPER"] = TEST_DEFAULTS["auth"]["secret_pepper"]
    return subprocess.run(
        [tool("tokenservice"), "audit", "--redis-url", valkey.url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


async def test_every_admin_action_is_logged_and_streamed(
    server: Application,
    channel: grpc.aio.Channel,
    admin_credentials: Credentials,
    valkey: RedisProcess,
) -> None:
    token = await issue_token(channel, admin_credentials)
    with structlog.testing.capture_logs() as logs:
        await _admin_actions(channel, token)
    logged = [event for event in logs if event["event"] == "audit"]
    _matches(logged)
    assert logged[3]["revoked_token_count"] == "0"
    assert logged[6]["revoked_token_count"] == "0"
    assert logged[2]["previous_secret_grace_seconds"] == "60"
    assert {event["log_level"] for event in logged[-2:]} == {"warning"}

    stream = RedisAuditStore(server.redis.auth, 10_000)
    newest_first = await stream.recent(100)
    _matches([event for _, event in reversed(newest_first)])

    # The CLI reads the same stream.
    result = await asyncio.to_thread(_cli, valkey, "--json", "--limit", "3")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["action"] for line in lines] == ["client.create", "client.delete", "client.delete"]
    assert lines[0]["id"] == newest_first[0][0]
    table = await asyncio.to_thread(_cli, valkey, "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "time", "action", "target", "outcome", "actor", "identity", "detail"
    ]  # fmt: skip
    assert "failed (INVALID_REQUEST)" in table.stdout


async def test_the_audit_stream_is_bounded(app_factory: AppFactory, valkey: RedisProcess) -> None:
    app = await app_factory(redis={"url": valkey.url}, auth={"audit_max_entries": 100})
    assert app.components is not None
    event = AuditEvent(action="client.delete", target="client:x", outcome="ok", time=1.0)
    for _ in range(1000):
        await app.components.audit.record(event)
    length = await app.redis.auth.xlen(keys.AUDIT_STREAM)
    # MAXLEN ~ trims whole radix-tree nodes (stream-node-max-entries, 100 by default).
    assert 100 <= length <= 200


async def test_revocations_write_their_entry_in_the_same_step(
    server: Application, channel: grpc.aio.Channel, admin_credentials: Credentials
) -> None:
    """Bulk revocation and session end write their audit entry inside the revoking
    script: the count is the script's own, and a refusal decided by the script (no such
    session) is one entry, not one per layer."""
    meta = bearer(await issue_token(channel, admin_credentials))
    registry = client_registry_pb2_grpc.ClientRegistryStub(channel)
    tokens = token_service_pb2_grpc.TokenServiceStub(channel)
    created = await _create_client(registry, meta, "bulk")
    for _ in range(3):
        await issue_token(channel, Credentials("bulk", created.client_secret), "read")
    stream = RedisAuditStore(server.redis.auth, 10_000)
    before = len(await stream.recent(1000))
    revoked = await tokens.RevokeTokens(
        token_service_pb2.RevokeTokensRequest(client_id="bulk"), metadata=meta, timeout=5
    )
    assert revoked.revoked_token_count == 3
    unknown = "ses_" + "x" * 31
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await tokens.EndSession(
            token_service_pb2.EndSessionRequest(session_id=unknown), metadata=meta, timeout=5
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    newest_first = await stream.recent(1000)
    assert len(newest_first) == before + 2
    ended, bulk = newest_first[0][1], newest_first[1][1]
    assert (bulk.action, bulk.target, bulk.outcome) == ("tokens.revoke", "client:bulk", "ok")
    assert bulk.detail == {"revoked_token_count": "3"}
    assert bulk.actor == "test-admin"
    assert bulk.request_id
    assert (ended.action, ended.target) == ("session.end", f"session:{unknown}")
    assert (ended.outcome, ended.reason, ended.detail) == ("failed", "NOT_FOUND", {})
