"""No client secret or token is ever stored in clear (SPEC section 4).

A workload touching every path that handles a credential runs against a real server;
then every key and value of every Redis database is dumped, and none of the credentials
the workload saw may appear in it, in whole or as their random body. Their SHA-256 digests
and keyed hashes must appear (positive controls: a dump that missed the data would fail).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests.harness.grpc_server import (
    TEST_DEFAULTS,
    AppFactory,
    Credentials,
    bearer,
    bootstrap_admin,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_reason
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.bootstrap import admin_client_spec
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    new_credential,
)

CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS
PEPPER: str = TEST_DEFAULTS["auth"]["secret_pepper"]


def _needles(credential: str) -> list[bytes]:
    """The forms in which a credential must not be found: whole, without its prefix,
    its random body alone, and the body's raw bytes in base64url-decoded and hex form."""
    body = credential[5:-6]
    raw = base64.urlsafe_b64decode(body + "=")
    return [
        credential.encode(),
        credential[5:].encode(),
        body.encode(),
        raw,
        raw.hex().encode(),
        base64.b64encode(raw).rstrip(b"="),  # standard base64 of the same bytes
    ]


def _dump(sync: redis.Redis) -> Iterator[bytes]:
    """Every key and every value (by type) of the selected database, as bytes."""
    for key in sync.scan_iter(count=1000):
        yield key
        kind = sync.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "none":
            continue  # expired between SCAN and TYPE (short-lived keys such as rate buckets)
        if kind == "string":
            yield sync.get(key)
        elif kind == "hash":
            for field, value in sync.hgetall(key).items():
                yield field
                yield value
        elif kind == "set":
            yield from sync.smembers(key)
        elif kind == "zset":
            for member, score in sync.zrange(key, 0, -1, withscores=True):
                yield member
                yield repr(score).encode()
        elif kind == "list":
            yield from sync.lrange(key, 0, -1)
        elif kind == "stream":
            for entry_id, fields in sync.xrange(key):
                yield entry_id
                for field, value in fields.items():
                    yield field
                    yield value
        else:
            raise AssertionError(f"unexpected type {kind!r} of key {key!r}")


def _everything(valkey: RedisProcess) -> list[bytes]:
    databases = int(valkey.client().config_get("databases")["databases"])
    blobs: list[bytes] = []
    for db in range(databases):
        # A key may expire mid-dump: its GET then answers None.
        blobs.extend(blob for blob in _dump(valkey.client(db=db, decode_responses=False)) if blob)
    return blobs


def _slowlog_arguments(valkey: RedisProcess) -> list[bytes]:
    entries = valkey.client(decode_responses=False).slowlog_get(1_000_000)
    return [entry["command"] for entry in entries]


async def _create(
    channel: grpc.aio.Channel, admin_token: str, *, public: bool = False
) -> Credentials:
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    client = client_registry_pb2.Client(allowed_scopes=["read", "write"])
    if public:
        client.client_type = client_registry_pb2.CLIENT_TYPE_PUBLIC
        client.allowed_grant_types.append(token_service_pb2.GRANT_TYPE_AUTHORIZATION_CODE)
        client.redirect_uris.append("http://127.0.0.1/callback")
    else:
        client.client_type = client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL
        client.allowed_grant_types.append(CC)
    response = await stub.CreateClient(
        client_registry_pb2.CreateClientRequest(client=client),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return Credentials(response.client.client_id, response.client_secret)


async def test_no_secret_or_token_is_stored_in_clear(
    server: Application, channel: grpc.aio.Channel, valkey: RedisProcess
) -> None:
    sync = valkey.client()
    # Every command the server sends, with its arguments, lands in the slow log: so we
    # also see that no credential is ever *sent* to Redis, not just that none is kept.
    sync.config_set("slowlog-log-slower-than", 0)
    sync.config_set("slowlog-max-len", 100_000)
    sync.slowlog_reset()

    secrets: list[str] = []  # every client secret the workload saw
    live_tokens: list[str] = []  # tokens that must still be stored (by digest)
    revoked_tokens: list[str] = []  # tokens of the deleted client (blacklisted by digest)
    current_secrets: list[str] = []  # secrets whose keyed hash must be stored

    admin = await bootstrap_admin(server)
    secrets.append(admin.client_secret)
    assert (
        await server.components.registry.bootstrap(  # type: ignore[union-attr]
            admin.client_id, admin_client_spec(), admin.client_secret
        )
        == "unchanged"
    )
    replaced_admin_secret = new_credential(CredentialKind.CLIENT_SECRET)
    ops = await bootstrap_admin(server, client_id="ops-admin")
    assert server.components is not None
    assert (
        await server.components.registry.bootstrap(
            "ops-admin", admin_client_spec(), replaced_admin_secret
        )
        == "updated"
    )
    secrets += [ops.client_secret, replaced_admin_secret]
    current_secrets += [admin.client_secret, replaced_admin_secret]

    admin_token = await issue_token(channel, admin)
    live_tokens.append(admin_token)
    live_tokens.append(await issue_token(channel, Credentials("ops-admin", replaced_admin_secret)))

    clients = [await _create(channel, admin_token) for _ in range(5)]
    public = await _create(channel, admin_token, public=True)
    assert public.client_secret == ""
    issued_to: dict[str, list[str]] = {}
    for client in clients:
        secrets.append(client.client_secret)
        for scope in ("", "read", "write"):
            token = await issue_token(channel, client, scope=scope)
            issued_to.setdefault(client.client_id, []).append(token)
            live_tokens.append(token)
    registry = client_registry_pb2_grpc.ClientRegistryStub(channel)

    # Rotation with a grace period: both the new and the previous secret work.
    graced = await registry.RotateClientSecret(
        client_registry_pb2.RotateClientSecretRequest(
            client_id=clients[0].client_id, previous_secret_grace_seconds=300
        ),
        metadata=bearer(admin_token),
    )
    secrets.append(graced.client_secret)
    live_tokens.append(await issue_token(channel, clients[0]))
    live_tokens.append(
        await issue_token(channel, Credentials(clients[0].client_id, graced.client_secret))
    )
    current_secrets += [clients[0].client_secret, graced.client_secret]

    # Rotation without grace, then a client deleted (its tokens are revoked).
    plain = await registry.RotateClientSecret(
        client_registry_pb2.RotateClientSecretRequest(client_id=clients[1].client_id),
        metadata=bearer(admin_token),
    )
    secrets.append(plain.client_secret)
    live_tokens.append(
        await issue_token(channel, Credentials(clients[1].client_id, plain.client_secret))
    )
    current_secrets.append(plain.client_secret)
    current_secrets += [client.client_secret for client in clients[3:]]

    doomed = clients[2]
    doomed_tokens = issued_to[doomed.client_id]
    doomed_tokens += [await issue_token(channel, doomed) for _ in range(2)]
    deleted = await registry.DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=doomed.client_id),
        metadata=bearer(admin_token),
    )
    assert deleted.revoked_token_count == 5  # three issued in the loop, two just now
    revoked_tokens += doomed_tokens
    live_tokens = [token for token in live_tokens if token not in revoked_tokens]

    # Failed attempts carry credentials too; they must not be kept either.
    wrong_secret = new_credential(CredentialKind.CLIENT_SECRET)
    unknown_token = new_credential(CredentialKind.ACCESS_TOKEN)
    secrets.append(wrong_secret)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await issue_token(channel, Credentials(clients[3].client_id, wrong_secret))
    assert error_reason(caught.value) == "INVALID_CLIENT"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.ListClients(
            client_registry_pb2.ListClientsRequest(), metadata=bearer(unknown_token)
        )
    assert error_reason(caught.value) == "INVALID_TOKEN"

    all_tokens = live_tokens + revoked_tokens + [unknown_token]
    credentials = secrets + all_tokens
    assert len(set(credentials)) == len(credentials) >= 30

    # -- the dump ---------------------------------------------------------------------
    blobs = _everything(valkey)
    sent = _slowlog_arguments(valkey)
    assert len(blobs) > 100
    assert len(sent) > 50
    corpus = b"\n".join(blobs)
    commands = b"\n".join(sent)

    for credential in credentials:
        for needle in _needles(credential):
            assert needle not in corpus, f"{credential[:5]}… stored in clear"
            assert needle not in commands, f"{credential[:5]}… sent to Redis in clear"
    assert PEPPER.encode() not in corpus
    assert PEPPER.encode() not in commands

    # -- positive controls: what *is* stored ------------------------------------------
    # (Index members hold raw digest bytes: 'A' + SHA-256, not UTF-8.)
    keys = {blob.decode(errors="replace") for blob in _dump(valkey.client(decode_responses=False))}
    for token in live_tokens:
        assert f"auth:access_token:{digest(token)}" in keys
        assert b"A" + hashlib.sha256(token.encode()).digest() in corpus
    for token in revoked_tokens:
        assert f"auth:access_token:{digest(token)}" not in keys
        assert f"auth:blacklist:{digest(token)}" in keys
    assert f"auth:access_token:{digest(admin_token)}".encode() in commands
    hasher = SecretHasher(PEPPER.encode())
    for secret in current_secrets:
        assert hasher.hash(secret).encode() in corpus
    for client in clients:
        assert (f"auth:client:{client.client_id}" in keys) is (client is not doomed)


# -- embedded mode: the admin credentials file ---------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _issue_admin(app: Application, saved: dict[str, Any]) -> str:
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        credentials = Credentials(saved["client_id"], saved["client_secret"])
        token = await issue_token(channel, credentials, scope="tokenservice.admin")
        stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
        listed = await stub.ListClients(
            client_registry_pb2.ListClientsRequest(), metadata=bearer(token), timeout=5
        )
        assert saved["client_id"] in [client.client_id for client in listed.clients]
        return token


async def test_embedded_mode_writes_private_admin_credentials(
    app_factory: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    first = await app_factory(redis={"data_dir": str(data_dir)})
    path = data_dir / "admin-credentials.json"

    assert path.is_file()
    assert _mode(path) == 0o600
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert set(saved) == {"client_id", "client_secret"}
    assert saved["client_id"] == "tokenservice-admin"
    assert saved["client_secret"].startswith("tscs_")
    token = await _issue_admin(first, saved)

    # A restart on the same data directory keeps the secret (and the stored token); a
    # file loosened in between is written back private.
    await first.stop(grace=0)
    path.chmod(0o644)
    second = await app_factory(redis={"data_dir": str(data_dir)})
    assert json.loads(path.read_text(encoding="utf-8")) == saved
    assert _mode(path) == 0o600
    await _issue_admin(second, saved)
    assert second.addresses is not None
    async with grpc.aio.insecure_channel(second.addresses.grpc_target) as channel:
        stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
        await stub.ListClients(
            client_registry_pb2.ListClientsRequest(), metadata=bearer(token), timeout=5
        )
    await second.stop(grace=0)

    # The log names the file, never the secret; no other file holds the secret or token.
    logged = capsys.readouterr()
    assert str(path) in logged.out + logged.err
    assert saved["client_secret"] not in logged.out + logged.err
    assert token not in logged.out + logged.err
    for other in sorted(data_dir.rglob("*")):
        if other == path or not other.is_file():
            continue
        content = other.read_bytes()
        for credential in (saved["client_secret"], token):
            for needle in _needles(credential):
                assert needle not in content, f"{other.name} holds a credential"
    assert any(os.fspath(other).endswith(".aof") for other in data_dir.rglob("*"))
