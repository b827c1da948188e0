"""ClientRegistry input validation and caller authorization, case by case, on one shared
server (real Valkey): every refused request names its field and writes nothing."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.field_mask_pb2 import FieldMask

from tests.harness.grpc_server import (
    TEST_DEFAULTS,
    Credentials,
    _merge,
    bearer,
    bootstrap_admin,
    issue_token,
)
from tests.harness.redis_servers import RedisProcess
from tests.integration.test_client_registry import (
    AUTH_CODE,
    CC,
    CONFIDENTIAL,
    PUBLIC,
    REFRESH,
    Admin,
    Metadata,
    expect_error,
    redis_snapshot,
    rpc_error,
    service_client,
    web_client,
)
from tokenservice.client import error_info
from tokenservice.v1 import client_registry_pb2 as pb
from tokenservice.v1 import client_registry_pb2_grpc, token_service_pb2_grpc
from tokenservice_server.app import Application
from tokenservice_server.config import load_settings
from tokenservice_server.domain.credentials import CredentialKind, new_credential

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVALID = grpc.StatusCode.INVALID_ARGUMENT
_ids = itertools.count()


@dataclass
class Shared:
    app: Application
    valkey: RedisProcess
    channel: grpc.aio.Channel
    admin: Admin


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    valkey = RedisProcess(tmp_path_factory.mktemp("registry") / "valkey", name="valkey")
    valkey.start()
    app = Application(load_settings(None, _merge(TEST_DEFAULTS, {"redis": {"url": valkey.url}})))
    try:
        await app.start()
        assert app.addresses is not None
        async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
            token = await issue_token(channel, await bootstrap_admin(app))
            admin = Admin(
                client_registry_pb2_grpc.ClientRegistryStub(channel),
                token_service_pb2_grpc.TokenServiceStub(channel),
                bearer(token),
            )
            yield Shared(app, valkey, channel, admin)
    finally:
        await app.stop(grace=0)
        valkey.cleanup()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


async def assert_refused_without_writes(
    shared: Shared, call: Any, field: str, client_id: str = ""
) -> None:
    """INVALID_ARGUMENT/INVALID_REQUEST naming ``field``, and Redis exactly as before."""
    redis = shared.valkey.client()
    before = redis_snapshot(shared.valkey)
    index_before = redis.zrange("auth:clients", 0, -1)
    await expect_error(call(), INVALID, "INVALID_REQUEST", field)
    if client_id:
        assert not redis.exists(f"auth:client:{client_id}")
    assert redis.zrange("auth:clients", 0, -1) == index_before
    assert redis_snapshot(shared.valkey) == before


# -- CreateClient validation --------------------------------------------------------------

OK_URI = "https://app.example.com/cb"


def _code_client(**fields: Any) -> pb.Client:
    """A confidential authorization_code client (redirect URIs matter to it)."""
    values: dict[str, Any] = {"allowed_grant_types": [AUTH_CODE], "redirect_uris": [OK_URI]}
    values.update(fields)
    return service_client(**values)


# (case id, client fields or None for "no client at all", field named by the error)
CREATE_CASES: list[tuple[str, dict[str, Any] | None, str]] = [
    ("missing-client", None, "client"),
    ("id-space", {"client_id": "has space"}, "client.client_id"),
    ("id-slash", {"client_id": "a/b"}, "client.client_id"),
    ("id-colon", {"client_id": "a:b"}, "client.client_id"),
    ("id-non-ascii", {"client_id": "clïent"}, "client.client_id"),
    ("id-too-long", {"client_id": "x" * 129}, "client.client_id"),
    ("type-unspecified", {"client_type": pb.CLIENT_TYPE_UNSPECIFIED}, "client.client_type"),
    ("type-unknown", {"client_type": 7}, "client.client_type"),
    ("no-grant-types", {"allowed_grant_types": []}, "client.allowed_grant_types"),
    ("grant-unspecified", {"allowed_grant_types": [0]}, "client.allowed_grant_types[0]"),
    ("grant-unknown", {"allowed_grant_types": [CC, 99]}, "client.allowed_grant_types[1]"),
    (
        "public-client-credentials",
        {"client_type": PUBLIC, "allowed_grant_types": [CC]},
        "client.allowed_grant_types",
    ),
    ("scope-space", {"allowed_scopes": ["ok", "two words"]}, "client.allowed_scopes[1]"),
    ("scope-quote", {"allowed_scopes": ['say"hi']}, "client.allowed_scopes[0]"),
    ("scope-backslash", {"allowed_scopes": ["back\\slash"]}, "client.allowed_scopes[0]"),
    ("scope-non-ascii", {"allowed_scopes": ["café"]}, "client.allowed_scopes[0]"),
    ("scope-control", {"allowed_scopes": ["tab\there"]}, "client.allowed_scopes[0]"),
    ("scope-empty", {"allowed_scopes": [""]}, "client.allowed_scopes[0]"),
    ("scope-too-long", {"allowed_scopes": ["s" * 129]}, "client.allowed_scopes[0]"),
    (
        "scopes-too-many",
        {"allowed_scopes": [f"s{index}" for index in range(101)]},
        "client.allowed_scopes",
    ),
    ("redirect-relative", {"redirect_uris": ["/callback"]}, "client.redirect_uris[0]"),
    ("redirect-no-host", {"redirect_uris": ["https:///cb"]}, "client.redirect_uris[0]"),
    ("redirect-no-scheme", {"redirect_uris": ["app.example.com/cb"]}, "client.redirect_uris[0]"),
    ("redirect-fragment", {"redirect_uris": [OK_URI + "#frag"]}, "client.redirect_uris[0]"),
    ("redirect-empty-fragment", {"redirect_uris": [OK_URI + "#"]}, "client.redirect_uris[0]"),
    (
        "redirect-http-remote",
        {"redirect_uris": [OK_URI, "http://app.example.com/cb"]},
        "client.redirect_uris[1]",
    ),
    (
        "redirect-http-127-lookalike-name",
        {"redirect_uris": ["http://127.attacker.example/cb"]},
        "client.redirect_uris[0]",
    ),
    (
        "redirect-http-localhost-lookalike",
        {"redirect_uris": ["http://localhost.attacker.example/cb"]},
        "client.redirect_uris[0]",
    ),
    (
        "redirect-userinfo",
        {"redirect_uris": ["https://user:pw@app.example.com/cb"]},
        "client.redirect_uris[0]",
    ),
    (
        "redirect-user",
        {"redirect_uris": ["https://user@app.example.com/cb"]},
        "client.redirect_uris[0]",
    ),
    (
        "redirect-custom-scheme",
        {"redirect_uris": ["ftp://app.example.com/cb"]},
        "client.redirect_uris[0]",
    ),
    ("redirect-javascript", {"redirect_uris": ["javascript:alert(1)"]}, "client.redirect_uris[0]"),
    (
        "redirect-whitespace",
        {"redirect_uris": ["https://app.example.com/a b"]},
        "client.redirect_uris[0]",
    ),
    (
        "redirect-bad-port",
        {"redirect_uris": ["https://app.example.com:99999/cb"]},
        "client.redirect_uris[0]",
    ),
    ("redirect-empty", {"redirect_uris": [""]}, "client.redirect_uris[0]"),
    (
        "redirect-too-long",
        {"redirect_uris": ["https://app.example.com/" + "a" * 1980]},
        "client.redirect_uris[0]",
    ),
    (
        "redirects-too-many",
        {"redirect_uris": [f"https://app.example.com/{index}" for index in range(21)]},
        "client.redirect_uris",
    ),
    ("auth-code-without-redirect", {"redirect_uris": []}, "client.redirect_uris"),
    ("display-name-too-long", {"display_name": "d" * 201}, "client.display_name"),
    ("display-name-control", {"display_name": "line\nbreak"}, "client.display_name"),
    (
        "audiences-too-many",
        {"audiences": [f"aud-{index}" for index in range(21)]},
        "client.audiences",
    ),
    ("audience-too-long", {"audiences": ["ok", "a" * 257]}, "client.audiences[1]"),
    ("audience-empty", {"audiences": [""]}, "client.audiences[0]"),
    ("access-ttl-negative", {"access_token_ttl_seconds": -1}, "client.access_token_ttl_seconds"),
    (
        "access-ttl-too-large",
        {"access_token_ttl_seconds": 86_401},
        "client.access_token_ttl_seconds",
    ),
    ("refresh-ttl-negative", {"refresh_token_ttl_seconds": -1}, "client.refresh_token_ttl_seconds"),
    (
        "refresh-ttl-too-short",
        {"refresh_token_ttl_seconds": 59},
        "client.refresh_token_ttl_seconds",
    ),
    (
        "refresh-ttl-too-large",
        {"refresh_token_ttl_seconds": 31_536_001},
        "client.refresh_token_ttl_seconds",
    ),
    ("rate-limit-negative", {"rate_limit_per_minute": -1}, "client.rate_limit_per_minute"),
    ("rate-limit-too-large", {"rate_limit_per_minute": 1_000_001}, "client.rate_limit_per_minute"),
]


@pytest.mark.parametrize(
    ("fields", "field"),
    [pytest.param(fields, field, id=case) for case, fields, field in CREATE_CASES],
)
async def test_create_refuses_invalid_input_and_writes_nothing(
    shared: Shared, fields: dict[str, Any] | None, field: str
) -> None:
    request = pb.CreateClientRequest()
    client_id = ""
    if fields is not None:
        client_id = fields.get("client_id") or unique("refused")
        request.client.CopyFrom(_code_client(**{**fields, "client_id": client_id}))

    async def create() -> Any:
        return await shared.admin.stub.CreateClient(
            request, metadata=shared.admin.metadata, timeout=5
        )

    await assert_refused_without_writes(shared, create, field, client_id)


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/cb",
        "http://127.0.0.1/cb",
        "http://localhost/cb",
        "http://localhost:3000/cb",
        "http://[::1]:9000/cb",
        "https://app.example.com/cb?tenant=a&x=1",
        "https://app.example.com:8443/cb",
    ],
)
async def test_create_accepts_https_and_loopback_http_redirects(shared: Shared, uri: str) -> None:
    for make in (_code_client, web_client):
        created = await shared.admin.create(make(client_id=unique("redirect"), redirect_uris=[uri]))
        assert list(created.client.redirect_uris) == [uri]


async def test_create_accepts_every_limit_exactly(shared: Shared) -> None:
    client = service_client(
        "x" * 128,
        display_name="d" * 200,
        allowed_grant_types=[CC, AUTH_CODE, REFRESH],
        allowed_scopes=["s" * 128, *[f"s{index}" for index in range(99)]],
        redirect_uris=[
            "https://app.example.com/" + "a" * 1976,
            *[f"https://app.example.com/{index}" for index in range(19)],
        ],
        audiences=["a" * 256, *[f"aud-{index}" for index in range(19)]],
        access_token_ttl_seconds=86_400,
        refresh_token_ttl_seconds=31_536_000,
        rate_limit_per_minute=1_000_000,
    )
    assert len(client.redirect_uris[0]) == 2000
    created = (await shared.admin.create(client)).client
    assert len(created.allowed_scopes) == 100
    assert len(created.redirect_uris) == 20
    assert len(created.audiences) == 20
    assert created.access_token_ttl_seconds == 86_400
    assert await shared.admin.get("x" * 128) == created
    lowest = await shared.admin.create(
        service_client(
            "y",
            access_token_ttl_seconds=1,
            refresh_token_ttl_seconds=60,
            rate_limit_per_minute=1,
        )
    )
    assert lowest.client.refresh_token_ttl_seconds == 60


# -- UpdateClient validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "paths",
    [
        ["bogus"],
        ["client_type"],
        ["client_id"],
        ["create_time"],
        ["update_time"],
        ["previous_secret_expire_time"],
        ["client_secret"],
        ["display_name", "bogus"],
        ["*", "display_name"],
        ["allowed_scopes.0"],
        [],
    ],
)
async def test_update_mask_must_name_updatable_fields(shared: Shared, paths: list[str]) -> None:
    client_id = unique("masked")
    await shared.admin.create(service_client(client_id))
    change = pb.Client(client_id=client_id, display_name="x", client_type=PUBLIC)
    await assert_refused_without_writes(
        shared, lambda: shared.admin.update(change, *paths), "update_mask"
    )


# (case id, original client, change, mask, field): each change is judged on the merged client.
UPDATE_CASES: list[tuple[str, pb.Client, pb.Client, list[str], str]] = [
    (
        "auth-code-still-needs-a-redirect",
        service_client(allowed_grant_types=[CC, AUTH_CODE], redirect_uris=[OK_URI]),
        pb.Client(redirect_uris=[]),
        ["redirect_uris"],
        "client.redirect_uris",
    ),
    (
        "adding-auth-code-needs-a-redirect",
        service_client(),
        pb.Client(allowed_grant_types=[CC, AUTH_CODE]),
        ["allowed_grant_types"],
        "client.redirect_uris",
    ),
    (
        "public-client-credentials",
        web_client(),
        pb.Client(allowed_grant_types=[CC]),
        ["allowed_grant_types"],
        "client.allowed_grant_types",
    ),
    (
        "no-grants",
        service_client(),
        pb.Client(allowed_grant_types=[]),
        ["allowed_grant_types"],
        "client.allowed_grant_types",
    ),
    (
        "grant-enum",
        service_client(),
        pb.Client(allowed_grant_types=[99]),
        ["allowed_grant_types"],
        "client.allowed_grant_types[0]",
    ),
    (
        "display-name",
        service_client(),
        pb.Client(display_name="x" * 201),
        ["display_name"],
        "client.display_name",
    ),
    (
        "scope",
        service_client(),
        pb.Client(allowed_scopes=["ok", "not ok"]),
        ["allowed_scopes"],
        "client.allowed_scopes[1]",
    ),
    (
        "redirect",
        web_client(),
        pb.Client(redirect_uris=["http://app.example.com/cb"]),
        ["redirect_uris"],
        "client.redirect_uris[0]",
    ),
    (
        "audiences",
        service_client(),
        pb.Client(audiences=[f"a{index}" for index in range(21)]),
        ["audiences"],
        "client.audiences",
    ),
    (
        "ttl",
        service_client(),
        pb.Client(access_token_ttl_seconds=-5),
        ["access_token_ttl_seconds"],
        "client.access_token_ttl_seconds",
    ),
    (
        "rate-limit",
        service_client(),
        pb.Client(rate_limit_per_minute=-1),
        ["rate_limit_per_minute"],
        "client.rate_limit_per_minute",
    ),
    (
        "star-mask-validates-everything",
        service_client(),
        pb.Client(allowed_grant_types=[CC], allowed_scopes=["bad scope"]),
        ["*"],
        "client.allowed_scopes[0]",
    ),
]


@pytest.mark.parametrize(
    ("original", "change", "paths", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in UPDATE_CASES],
)
async def test_update_validates_the_merged_client_and_writes_nothing(
    shared: Shared, original: pb.Client, change: pb.Client, paths: list[str], field: str
) -> None:
    client_id = unique("merged")
    created = pb.Client()
    created.CopyFrom(original)
    created.client_id = client_id
    await shared.admin.create(created)
    request = pb.Client()
    request.CopyFrom(change)
    request.client_id = client_id
    await assert_refused_without_writes(shared, lambda: shared.admin.update(request, *paths), field)


# -- ListClients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "é",
        "eyJ2IjoxfQ",  # {"v":1} (no "after")
        "eyJ2IjoyLCJhZnRlciI6ImEifQ",  # {"v":2,"after":"a"}
        "eyJ2IjoxLCJhZnRlciI6ImEgYiJ9",  # {"v":1,"after":"a b"}: not a client id
        "eyJ2IjoxLCJhZnRlciI6MX0",  # {"v":1,"after":1}
        "WzFd",  # [1]
        "x" * 5000,
    ],
)
async def test_list_rejects_a_page_token_it_did_not_issue(shared: Shared, token: str) -> None:
    await expect_error(shared.admin.list(10, token), INVALID, "INVALID_REQUEST", "page_token")


# -- Caller authorization -----------------------------------------------------------------

VICTIM = "victim"
RPCS: dict[str, tuple[str, Any]] = {
    "CreateClient": ("CreateClient", pb.CreateClientRequest(client=service_client("intruder"))),
    "GetClient": ("GetClient", pb.GetClientRequest(client_id=VICTIM)),
    "ListClients": ("ListClients", pb.ListClientsRequest()),
    "UpdateClient": (
        "UpdateClient",
        pb.UpdateClientRequest(
            client=pb.Client(client_id=VICTIM, display_name="pwned"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
    ),
    "DeleteClient": ("DeleteClient", pb.DeleteClientRequest(client_id=VICTIM)),
    "RotateClientSecret": (
        "RotateClientSecret",
        pb.RotateClientSecretRequest(client_id=VICTIM, previous_secret_grace_seconds=60),
    ),
}


async def test_every_registry_rpc_is_covered() -> None:
    assert set(RPCS) == set(pb.DESCRIPTOR.services_by_name["ClientRegistry"].methods_by_name)


@dataclass
class Outsiders:
    victim_secret: str
    victim_token: str  # a valid token without tokenservice.admin
    reader_token: str  # a valid token with every other tokenservice scope


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outsiders(shared: Shared) -> Outsiders:
    victim = await shared.admin.create(service_client(VICTIM, allowed_scopes=["billing.read"]))
    reader = await shared.admin.create(
        service_client(
            "reader",
            allowed_scopes=["tokenservice.introspect", "tokenservice.authorize", "cache:*:read"],
        )
    )
    return Outsiders(
        victim.client_secret,
        await issue_token(shared.channel, Credentials(VICTIM, victim.client_secret)),
        await issue_token(shared.channel, Credentials("reader", reader.client_secret)),
    )


def _credential_cases(outsiders: Outsiders) -> list[tuple[str, Metadata, grpc.StatusCode, str]]:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    reader = outsiders.reader_token
    return [
        ("no metadata", (), unauthenticated, "UNAUTHENTICATED"),
        ("empty authorization", (("authorization", ""),), unauthenticated, "UNAUTHENTICATED"),
        ("not a token", bearer("not-a-token"), unauthenticated, "INVALID_TOKEN"),
        (
            "bad checksum",
            bearer(reader[:-1] + ("x" if reader[-1] != "x" else "y")),
            unauthenticated,
            "INVALID_TOKEN",
        ),
        ("truncated", bearer(reader[:-3]), unauthenticated, "INVALID_TOKEN"),
        ("client secret", bearer(outsiders.victim_secret), unauthenticated, "INVALID_TOKEN"),
        (
            "well-formed but unknown",
            bearer(new_credential(CredentialKind.ACCESS_TOKEN)),
            unauthenticated,
            "INVALID_TOKEN",
        ),
        ("basic scheme", (("authorization", f"Basic {reader}"),), unauthenticated, "INVALID_TOKEN"),
        ("bearer without token", (("authorization", "Bearer "),), unauthenticated, "INVALID_TOKEN"),
        (
            "token of a client without admin",
            bearer(outsiders.victim_token),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        ),
        (
            "every other tokenservice scope",
            bearer(reader),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        ),
    ]


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_registry_rpcs_need_an_admin_token(
    shared: Shared, outsiders: Outsiders, rpc: str
) -> None:
    name, request = RPCS[rpc]
    method = getattr(shared.admin.stub, name)
    before = redis_snapshot(shared.valkey)
    for case, metadata, code, reason in _credential_cases(outsiders):
        error = await rpc_error(method(request, metadata=metadata, timeout=5))
        info = error_info(error)
        got = (error.code(), info.reason if info is not None else None)
        assert got == (code, reason), f"{rpc} with {case}: {got} ({error.details()})"
    # Nothing was created, changed, rotated or deleted by the refused calls...
    assert redis_snapshot(shared.valkey) == before
    # ...and the same (harmless) request with the admin token goes through.
    if name in {"CreateClient", "GetClient", "ListClients", "UpdateClient"}:
        await method(request, metadata=shared.admin.metadata, timeout=5)
    if name == "CreateClient":
        await shared.admin.delete("intruder")
    await shared.admin.issue(VICTIM, outsiders.victim_secret)
    assert (await shared.admin.get(VICTIM)).client_type == CONFIDENTIAL
