"""ClientRegistry against a real server on a real Valkey: every RPC, its errors, caller
authorization, pagination under concurrent inserts, revocation on delete and secret
rotation with a grace period (issue 3, "Must show")."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from tests.harness.grpc_server import Credentials, bearer, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_info
from tokenservice.v1 import client_registry_pb2 as pb
from tokenservice.v1 import client_registry_pb2_grpc, token_service_pb2, token_service_pb2_grpc
from tokenservice_server.domain.credentials import CredentialKind, is_well_formed

CC = token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS
AUTH_CODE = token_service_pb2.GRANT_TYPE_AUTHORIZATION_CODE
REFRESH = token_service_pb2.GRANT_TYPE_REFRESH_TOKEN
CONFIDENTIAL = pb.CLIENT_TYPE_CONFIDENTIAL
PUBLIC = pb.CLIENT_TYPE_PUBLIC
Metadata = tuple[tuple[str, str], ...]


# -- helpers ------------------------------------------------------------------------------


def service_client(client_id: str = "", **fields: Any) -> pb.Client:
    """A valid confidential client_credentials client; ``fields`` override."""
    values: dict[str, Any] = {
        "client_id": client_id,
        "display_name": "billing service",
        "client_type": CONFIDENTIAL,
        "allowed_grant_types": [CC],
        "allowed_scopes": ["billing.read", "billing.write"],
    }
    values.update(fields)
    return pb.Client(**values)


def web_client(client_id: str = "", **fields: Any) -> pb.Client:
    """A valid public authorization_code client."""
    values: dict[str, Any] = {
        "client_id": client_id,
        "display_name": "web app",
        "client_type": PUBLIC,
        "allowed_grant_types": [AUTH_CODE, REFRESH],
        "allowed_scopes": ["openid", "profile"],
        "redirect_uris": ["https://app.example.com/callback"],
    }
    values.update(fields)
    return pb.Client(**values)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def expect_error(
    call: Awaitable[Any],
    code: grpc.StatusCode,
    reason: str,
    field: str | None = None,
) -> grpc.aio.AioRpcError:
    """The call fails with ``code`` and exactly the ErrorInfo ``reason`` (and field)."""
    error = await rpc_error(call)
    info = error_info(error)
    assert error.code() is code, (error.code(), error.details())
    assert info is not None, f"no ErrorInfo in {error.code()}: {error.details()}"
    assert info.domain == "tokenservice"
    assert info.reason == reason, (info.reason, error.details())
    if field is not None:
        assert info.metadata.get("field") == field, (dict(info.metadata), error.details())
    return error


def redis_snapshot(valkey: RedisProcess) -> dict[str, Any]:
    """Every key of the database with its content (to prove a call wrote nothing).

    Rate-limit buckets are left out: they belong to earlier token requests and expire on
    their own while a test runs. So is the audit trail (``auth_audit``): a refused admin
    call is recorded there by design (tests/integration/test_audit_trail.py). Contents are
    bytes: index members of access tokens hold raw digests.
    """
    client = valkey.client(decode_responses=False)
    snapshot: dict[str, Any] = {}
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        if key.startswith("auth:rate_limit:") or key == "auth_audit":
            continue
        kind = client.type(key).decode()
        if kind == "hash":
            snapshot[key] = ("hash", client.hgetall(key))
        elif kind == "zset":
            snapshot[key] = ("zset", client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            snapshot[key] = ("set", client.smembers(key))
        elif kind == "string":
            snapshot[key] = ("string", client.get(key))
        else:
            snapshot[key] = (kind, None)
    return snapshot


def timestamp_seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


def issue_request(client_id: str, secret: str, scope: str = "") -> Any:
    return token_service_pb2.IssueTokenRequest(
        grant_type=CC, client_id=client_id, client_secret=secret, scope=scope
    )


@dataclass
class Admin:
    """The ClientRegistry stub with admin credentials attached."""

    stub: client_registry_pb2_grpc.ClientRegistryStub
    tokens: Any  # TokenServiceStub
    metadata: Metadata

    async def create(self, client: pb.Client) -> pb.CreateClientResponse:
        return await self.stub.CreateClient(
            pb.CreateClientRequest(client=client), metadata=self.metadata, timeout=5
        )

    async def get(self, client_id: str) -> pb.Client:
        response = await self.stub.GetClient(
            pb.GetClientRequest(client_id=client_id), metadata=self.metadata, timeout=5
        )
        return response.client

    async def list(self, page_size: int = 0, page_token: str = "") -> pb.ListClientsResponse:
        return await self.stub.ListClients(
            pb.ListClientsRequest(page_size=page_size, page_token=page_token),
            metadata=self.metadata,
            timeout=5,
        )

    async def list_all(self, page_size: int = 500) -> list[pb.Client]:
        clients: list[pb.Client] = []
        token = ""
        while True:
            page = await self.list(page_size, token)
            clients.extend(page.clients)
            token = page.next_page_token
            if not token:
                return clients

    async def update(self, client: pb.Client, *paths: str) -> pb.Client:
        response = await self.stub.UpdateClient(
            pb.UpdateClientRequest(client=client, update_mask=FieldMask(paths=list(paths))),
            metadata=self.metadata,
            timeout=5,
        )
        return response.client

    async def delete(self, client_id: str) -> int:
        response = await self.stub.DeleteClient(
            pb.DeleteClientRequest(client_id=client_id), metadata=self.metadata, timeout=5
        )
        return int(response.revoked_token_count)

    async def rotate(self, client_id: str, grace: int = 0) -> pb.RotateClientSecretResponse:
        return await self.stub.RotateClientSecret(
            pb.RotateClientSecretRequest(client_id=client_id, previous_secret_grace_seconds=grace),
            metadata=self.metadata,
            timeout=5,
        )

    async def issue(self, client_id: str, secret: str, scope: str = "") -> Any:
        return await self.tokens.IssueToken(issue_request(client_id, secret, scope), timeout=5)


@pytest.fixture
def admin(channel: grpc.aio.Channel, admin_token: str) -> Admin:
    return Admin(
        client_registry_pb2_grpc.ClientRegistryStub(channel),
        token_service_pb2_grpc.TokenServiceStub(channel),
        bearer(admin_token),
    )


# -- CreateClient -------------------------------------------------------------------------


async def test_create_generates_an_id_and_a_secret_shown_only_once(
    admin: Admin, valkey: RedisProcess
) -> None:
    before = time.time()
    created = await admin.create(service_client())
    second = await admin.create(service_client())
    after = time.time()

    client_id = created.client.client_id
    assert re.fullmatch(r"c-[0-9a-f]{24}", client_id), client_id
    assert second.client.client_id != client_id
    secret = created.client_secret
    assert is_well_formed(secret, CredentialKind.CLIENT_SECRET), secret
    assert secret.startswith("tscs_")
    assert second.client_secret != secret

    # Times are set by the server, equal on create, and within the call.
    create_time = timestamp_seconds(created.client.create_time)
    assert created.client.HasField("create_time")
    assert created.client.HasField("update_time")
    assert created.client.update_time == created.client.create_time
    assert before - 0.01 <= create_time <= after + 0.01
    assert not created.client.HasField("previous_secret_expire_time")

    # The stored record matches and holds only a keyed hash of the secret.
    fetched = await admin.get(client_id)
    assert fetched == created.client
    stored = valkey.client().hgetall(f"auth:client:{client_id}")
    assert stored["secret"].startswith("hs256:")
    assert secret not in str(stored)
    assert client_id in valkey.client().zrange("auth:clients", 0, -1)

    # The secret works at the token endpoint.
    issued = await admin.issue(client_id, secret, "billing.read")
    assert issued.scope == "billing.read"

    # Neither GetClient nor ListClients ever carries the secret: the Client message has
    # no field for it, and no response bytes contain it.
    secret_fields = [f.name for f in pb.Client.DESCRIPTOR.fields if "secret" in f.name]
    assert secret_fields == ["previous_secret_expire_time"]
    assert pb.Client.DESCRIPTOR.fields_by_name["previous_secret_expire_time"].message_type
    listed = await admin.list(500)
    get_bytes = pb.GetClientResponse(client=fetched).SerializeToString()
    assert secret.encode() not in get_bytes
    assert secret.encode() not in listed.SerializeToString()
    assert client_id in [client.client_id for client in listed.clients]


async def test_create_honours_a_given_id_and_ignores_output_only_fields(admin: Admin) -> None:
    request = service_client(
        "payments-api",
        allowed_scopes=["b.scope", "a.scope", "b.scope"],
        audiences=["https://api.example.com"],
        access_token_ttl_seconds=600,
        refresh_token_ttl_seconds=3600,
        rate_limit_per_minute=120,
    )
    request.create_time.FromSeconds(1000)
    request.update_time.FromSeconds(1000)
    request.previous_secret_expire_time.FromSeconds(1000)
    created = await admin.create(request)
    client = created.client
    assert client.client_id == "payments-api"
    assert client.display_name == "billing service"
    assert client.client_type == CONFIDENTIAL
    assert list(client.allowed_grant_types) == [CC]
    assert list(client.allowed_scopes) == ["a.scope", "b.scope"]  # a set: sorted, unique
    assert list(client.audiences) == ["https://api.example.com"]
    assert client.access_token_ttl_seconds == 600
    assert client.refresh_token_ttl_seconds == 3600
    assert client.rate_limit_per_minute == 120
    assert timestamp_seconds(client.create_time) > time.time() - 60
    assert not client.HasField("previous_secret_expire_time")
    assert await admin.get("payments-api") == client


async def test_public_clients_get_no_secret(admin: Admin, valkey: RedisProcess) -> None:
    created = await admin.create(web_client("spa"))
    assert created.client_secret == ""
    assert created.client.client_type == PUBLIC
    assert "secret" not in valkey.client().hgetall("auth:client:spa")
    # And a secret cannot be made up for it later.
    await expect_error(
        admin.issue("spa", "tscs_anything"), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"
    )


async def test_duplicate_id_is_already_exists_and_keeps_the_original(
    admin: Admin, valkey: RedisProcess
) -> None:
    original = await admin.create(service_client("dup"))
    before = valkey.client().hgetall("auth:client:dup")
    await expect_error(
        admin.create(service_client("dup", display_name="impostor")),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        "client.client_id",
    )
    assert valkey.client().hgetall("auth:client:dup") == before
    await admin.issue("dup", original.client_secret)  # the original secret still works

    # Racing creates of one id: exactly one wins.
    results = await asyncio.gather(
        *(admin.create(service_client("race", display_name=f"n{i}")) for i in range(10)),
        return_exceptions=True,
    )
    winners = [result for result in results if isinstance(result, pb.CreateClientResponse)]
    assert len(winners) == 1, results
    for result in results:
        if not isinstance(result, pb.CreateClientResponse):
            assert isinstance(result, grpc.aio.AioRpcError)
            assert result.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (await admin.get("race")).display_name == winners[0].client.display_name
    await admin.issue("race", winners[0].client_secret)


# -- GetClient ----------------------------------------------------------------------------


async def test_get_unknown_is_not_found_and_malformed_is_invalid(admin: Admin) -> None:
    await expect_error(
        admin.get("no-such-client"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "client_id"
    )
    for bad in ("", "has space", "x" * 129, "slash/id", "ünï"):
        await expect_error(
            admin.get(bad), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "client_id"
        )


# -- ListClients --------------------------------------------------------------------------


async def create_many(admin: Admin, ids: list[str]) -> None:
    for start in range(0, len(ids), 50):
        await asyncio.gather(
            *(admin.create(service_client(cid)) for cid in ids[start : start + 50])
        )


async def test_list_page_size_default_negative_and_cap(admin: Admin) -> None:
    ids = [f"svc-{index:04d}" for index in range(520)]
    await create_many(admin, ids)
    everyone = sorted([*ids, "test-admin"])

    default = await admin.list(0)
    assert len(default.clients) == 50
    assert [client.client_id for client in default.clients] == everyone[:50]
    assert default.next_page_token

    capped = await admin.list(10_000)
    assert len(capped.clients) == 500
    assert [client.client_id for client in capped.clients] == everyone[:500]
    rest = await admin.list(2**31 - 1, capped.next_page_token)
    assert [client.client_id for client in rest.clients] == everyone[500:]
    assert rest.next_page_token == ""

    # A page that ends exactly at the last client says so: no empty trailing page.
    head = await admin.list(len(everyone) - 500)
    tail = await admin.list(500, head.next_page_token)
    assert [client.client_id for client in tail.clients] == everyone[-500:]
    assert tail.next_page_token == ""

    for negative in (-1, -(2**31)):
        await expect_error(
            admin.list(negative), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "page_size"
        )


async def test_pagination_under_concurrent_inserts(admin: Admin) -> None:
    # 40 clients with gaps in their ids so later inserts land before, between and after.
    existing = [f"svc-{index * 10:04d}" for index in range(40)]
    await create_many(admin, existing)
    before_listing = {*existing, "test-admin"}

    inserted: list[str] = []
    stop = asyncio.Event()

    async def background_writer() -> None:
        # Inserts racing the page fetches (not just between them).
        count = 0
        while not stop.is_set():
            cid = f"svc-{(count * 37) % 400:04d}-bg{count}"
            await admin.create(service_client(cid))
            inserted.append(cid)
            count += 1
            await asyncio.sleep(0)

    writer = asyncio.create_task(background_writer())
    seen: list[str] = []
    pages = 0
    token = ""
    passed_then_inserted: list[str] = []
    ahead_then_inserted: list[str] = []
    try:
        while True:
            page = await admin.list(7, token)
            pages += 1
            assert 0 < len(page.clients) <= 7
            seen.extend(client.client_id for client in page.clients)
            token = page.next_page_token
            if not token:
                break
            # Between pages: one insert behind the cursor, one far ahead of it.
            cursor = seen[-1]
            behind = f"{seen[0]}-late{pages}"
            ahead = f"svc-9999-late{pages:02d}"
            assert behind < cursor < ahead
            await admin.create(service_client(behind))
            await admin.create(service_client(ahead))
            passed_then_inserted.append(behind)
            ahead_then_inserted.append(ahead)
    finally:
        stop.set()
        await writer

    assert pages > 3
    assert inserted, "the background writer never ran"
    assert len(seen) == len(set(seen)), "a client was listed twice"
    assert seen == sorted(seen)
    assert all(a < b for a, b in itertools.pairwise(seen))
    missing = before_listing - set(seen)
    assert not missing, f"clients that existed before the listing were skipped: {missing}"
    assert set(ahead_then_inserted) <= set(seen)  # inserted ahead of the cursor: listed
    assert not set(passed_then_inserted) & set(seen)  # inserted behind it: not listed
    # Everything is there afterwards.
    everything = {client.client_id for client in await admin.list_all()}
    assert everything == before_listing | set(inserted) | set(passed_then_inserted) | set(
        ahead_then_inserted
    )


# -- UpdateClient -------------------------------------------------------------------------


async def test_update_changes_only_masked_fields(admin: Admin, valkey: RedisProcess) -> None:
    created = (
        await admin.create(
            service_client(
                "upd",
                display_name="one",
                allowed_scopes=["a", "b"],
                audiences=["aud-1"],
                access_token_ttl_seconds=600,
                rate_limit_per_minute=60,
            )
        )
    ).client
    await asyncio.sleep(0.01)

    # Every other field of the request differs, but only display_name is in the mask.
    changes = pb.Client(
        client_id="upd",
        display_name="two",
        client_type=PUBLIC,
        allowed_grant_types=[AUTH_CODE],
        allowed_scopes=["zzz"],
        audiences=[],
        access_token_ttl_seconds=0,
        rate_limit_per_minute=5,
    )
    updated = await admin.update(changes, "display_name")
    expected = pb.Client()
    expected.CopyFrom(created)
    expected.display_name = "two"
    expected.update_time.CopyFrom(updated.update_time)
    assert updated == expected
    assert updated.create_time == created.create_time
    assert timestamp_seconds(updated.update_time) > timestamp_seconds(created.update_time)
    assert await admin.get("upd") == updated

    # Two fields at once; an empty list clears a list field.
    updated2 = await admin.update(
        pb.Client(client_id="upd", allowed_scopes=["c"], audiences=[]),
        "allowed_scopes",
        "audiences",
    )
    assert list(updated2.allowed_scopes) == ["c"]
    assert list(updated2.audiences) == []
    assert updated2.display_name == "two"
    assert updated2.access_token_ttl_seconds == 600
    assert timestamp_seconds(updated2.update_time) > timestamp_seconds(updated.update_time)
    assert updated2.create_time == created.create_time

    # The change is in force at the token endpoint at once.
    secret = (await admin.rotate("upd")).client_secret
    await expect_error(
        admin.issue("upd", secret, "a"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE"
    )
    assert (await admin.issue("upd", secret, "c")).scope == "c"
    assert valkey.client().hget("auth:client:upd", "type") == "confidential"


async def test_update_star_mask_replaces_every_updatable_field(admin: Admin) -> None:
    created = (await admin.create(service_client("star", audiences=["x"]))).client
    replacement = pb.Client(
        client_id="star",
        display_name="renamed",
        client_type=CONFIDENTIAL,
        allowed_grant_types=[CC, AUTH_CODE],
        allowed_scopes=["s1"],
        redirect_uris=["https://app.example.com/cb"],
        audiences=[],
        access_token_ttl_seconds=60,
        refresh_token_ttl_seconds=120,
        rate_limit_per_minute=10,
    )
    updated = await admin.update(replacement, "*")
    expected = pb.Client()
    expected.CopyFrom(replacement)
    assert set(updated.allowed_grant_types) == {CC, AUTH_CODE}
    expected.allowed_grant_types[:] = updated.allowed_grant_types  # order is the server's
    expected.create_time.CopyFrom(created.create_time)
    expected.update_time.CopyFrom(updated.update_time)
    assert updated == expected


async def test_update_ignores_invalid_values_outside_the_mask(admin: Admin) -> None:
    await admin.create(service_client("m"))
    updated = await admin.update(
        pb.Client(
            client_id="m",
            display_name="x" * 500,
            allowed_grant_types=[],
            allowed_scopes=["ok"],
            access_token_ttl_seconds=-1,
        ),
        "allowed_scopes",
    )
    assert list(updated.allowed_scopes) == ["ok"]
    assert updated.display_name == "billing service"


async def test_update_unknown_malformed_or_missing_client(admin: Admin) -> None:
    await expect_error(
        admin.update(pb.Client(client_id="ghost", display_name="x"), "display_name"),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "client.client_id",
    )
    await expect_error(
        admin.update(pb.Client(client_id="bad id", display_name="x"), "display_name"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "client.client_id",
    )
    await expect_error(
        admin.stub.UpdateClient(
            pb.UpdateClientRequest(update_mask=FieldMask(paths=["display_name"])),
            metadata=admin.metadata,
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "client",
    )


async def test_concurrent_updates_of_one_client(admin: Admin, valkey: RedisProcess) -> None:
    await admin.create(service_client("hot"))
    generation = int(valkey.client().hget("auth:client:hot", "gen"))
    names = [f"name-{index:02d}" for index in range(20)]
    results = await asyncio.gather(
        *(admin.update(pb.Client(client_id="hot", display_name=n), "display_name") for n in names),
        return_exceptions=True,
    )
    succeeded = [result.display_name for result in results if isinstance(result, pb.Client)]
    for result in results:
        if isinstance(result, pb.Client):
            continue
        assert isinstance(result, grpc.aio.AioRpcError), result
        # A conflict may be refused, but cleanly, retryable, never as INTERNAL.
        assert result.code() is grpc.StatusCode.ABORTED, result
        info = error_info(result)
        assert info is not None
        assert info.reason == "ABORTED"
    assert succeeded, "no update went through"

    final = await admin.get("hot")
    assert final.display_name in succeeded
    # Exactly one generation step per successful update: no update was lost or doubled.
    stored = valkey.client().hgetall("auth:client:hot")
    assert int(stored["gen"]) == generation + len(succeeded)
    expected = service_client("hot", display_name=final.display_name)
    assert list(final.allowed_scopes) == list(expected.allowed_scopes)
    assert list(final.allowed_grant_types) == [CC]
    assert final.client_type == CONFIDENTIAL
    assert stored["secret"].startswith("hs256:")
    assert "hot" in valkey.client().zrange("auth:clients", 0, -1)


# -- DeleteClient -------------------------------------------------------------------------


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_delete_revokes_every_token_of_the_client(
    admin: Admin, admin_token: str, channel: grpc.aio.Channel, valkey: RedisProcess
) -> None:
    created = await admin.create(
        service_client("doomed", allowed_scopes=["tokenservice.admin", "billing.read"])
    )
    secret = created.client_secret
    credentials = Credentials("doomed", secret)
    tokens = [await issue_token(channel, credentials) for _ in range(4)]
    tokens.append(await issue_token(channel, credentials, "billing.read"))
    other = await admin.create(service_client("survivor"))
    other_token = await issue_token(channel, Credentials("survivor", other.client_secret))

    redis = valkey.client()
    for token in tokens:
        assert redis.exists(f"auth:access_token:{sha256(token)}")
    # One of the tokens carries the admin scope, so it is accepted by ClientRegistry.
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    await stub.GetClient(pb.GetClientRequest(client_id="doomed"), metadata=bearer(tokens[0]))

    assert await admin.delete("doomed") == len(tokens)

    for token in tokens:
        digest = sha256(token)
        assert not redis.exists(f"auth:access_token:{digest}")
        assert redis.exists(f"auth:blacklist:{digest}")
        assert 0 < redis.ttl(f"auth:blacklist:{digest}") <= 900
    assert not redis.exists("auth:client:doomed")
    assert not redis.exists("auth:client_tokens:doomed")
    assert "doomed" not in redis.zrange("auth:clients", 0, -1)

    # The revoked admin-scoped token no longer authenticates anything.
    await expect_error(
        stub.GetClient(pb.GetClientRequest(client_id="survivor"), metadata=bearer(tokens[0])),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    # The client cannot get new tokens, and it is gone from reads.
    await expect_error(
        admin.issue("doomed", secret), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"
    )
    await expect_error(admin.get("doomed"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert "doomed" not in [client.client_id for client in await admin.list_all()]
    # Other clients' tokens are untouched.
    assert redis.exists(f"auth:access_token:{sha256(other_token)}")
    assert redis.exists(f"auth:access_token:{sha256(admin_token)}")
    await admin.get("survivor")

    # Deleting again, or an unknown or malformed id.
    await expect_error(admin.delete("doomed"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "client_id")
    await expect_error(
        admin.delete("never-was"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "client_id"
    )
    await expect_error(
        admin.delete("bad id"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "client_id"
    )

    # A client re-created under the same id does not resurrect the old tokens.
    again = await admin.create(
        service_client("doomed", allowed_scopes=["tokenservice.admin", "billing.read"])
    )
    await expect_error(
        stub.GetClient(pb.GetClientRequest(client_id="doomed"), metadata=bearer(tokens[0])),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    await expect_error(
        admin.issue("doomed", secret), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"
    )
    assert await admin.delete("doomed") == 0
    assert again.client_secret != secret


async def test_delete_of_a_client_without_tokens(admin: Admin) -> None:
    await admin.create(web_client("quiet"))
    assert await admin.delete("quiet") == 0


# -- RotateClientSecret -------------------------------------------------------------------


async def test_rotation_without_grace_retires_the_old_secret_at_once(admin: Admin) -> None:
    first = (await admin.create(service_client("rot"))).client_secret
    await admin.issue("rot", first)  # warms the server's client cache
    rotated = await admin.rotate("rot")
    second = rotated.client_secret
    assert is_well_formed(second, CredentialKind.CLIENT_SECRET)
    assert second != first
    assert not rotated.client.HasField("previous_secret_expire_time")
    assert rotated.client.update_time.ToNanoseconds() > rotated.client.create_time.ToNanoseconds()
    assert (await admin.issue("rot", second)).access_token
    await expect_error(admin.issue("rot", first), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert not (await admin.get("rot")).HasField("previous_secret_expire_time")


async def test_rotation_grace_period_is_honoured_then_expires(admin: Admin) -> None:
    first = (await admin.create(service_client("grace"))).client_secret
    second = (await admin.rotate("grace")).client_secret
    await admin.issue("grace", second)

    requested_at = time.time()
    rotated = await admin.rotate("grace", grace=2)
    third = rotated.client_secret
    expires = timestamp_seconds(rotated.client.previous_secret_expire_time)
    assert rotated.client.HasField("previous_secret_expire_time")
    assert requested_at + 2 - 0.5 <= expires <= time.time() + 2 + 0.01
    got = await admin.get("grace")
    assert got.previous_secret_expire_time == rotated.client.previous_secret_expire_time

    # Within the grace period both the new and the previous secret work...
    assert (await admin.issue("grace", third)).access_token
    assert (await admin.issue("grace", second)).access_token
    # ...but not the one before that.
    await expect_error(
        admin.issue("grace", first), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"
    )

    await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
    await expect_error(
        admin.issue("grace", second), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"
    )
    assert (await admin.issue("grace", third)).access_token
    # "unset when it no longer does" (client_registry.proto)
    assert not (await admin.get("grace")).HasField("previous_secret_expire_time")


async def test_rotation_errors(admin: Admin) -> None:
    await admin.create(web_client("public-app"))
    await expect_error(
        admin.rotate("public-app"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
    )
    await expect_error(admin.rotate("ghost"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await expect_error(admin.rotate("bad id"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    secret = (await admin.create(service_client("conf"))).client_secret
    for grace in (-1, 30 * 86_400 + 1, 2**31 - 1, -(2**31)):
        await expect_error(
            admin.rotate("conf", grace),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "previous_secret_grace_seconds",
        )
    # The refused rotations changed nothing.
    await admin.issue("conf", secret)
    assert not (await admin.get("conf")).HasField("previous_secret_expire_time")
    # The upper bound itself is allowed.
    longest = await admin.rotate("conf", 30 * 86_400)
    remaining = timestamp_seconds(longest.client.previous_secret_expire_time) - time.time()
    assert 30 * 86_400 - 5 < remaining <= 30 * 86_400
    await admin.issue("conf", secret)
    await admin.issue("conf", longest.client_secret)
