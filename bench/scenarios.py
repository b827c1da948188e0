"""The scenarios: what one RPC of each is, and what it needs prepared.

A scenario is registered with :func:`scenario`. Its ``prepare`` coroutine runs once in the
bench process against the live server (through a :class:`Fixture`) and returns picklable
data; its ``make_call`` runs in every load-generator process and returns the coroutine
function that performs one RPC (raising on a wrong answer, which is counted as an error).

Extension points:

* another RPC scenario (e.g. a ``check_cached`` variant with the hot-token cache on):
  register a :class:`Scenario`; give ``server`` a name from ``SERVERS`` (run.py) if it needs a
  server started with other settings;
* a scenario that is not "RPCs at a rate" (e.g. revoke propagation across two servers):
  add a function to ``CUSTOM`` in run.py; it gets the :class:`~bench.run.Bench` and returns
  a JSON-able dict of figures (see ``revoke_propagation`` there).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenservice.v1 import cache_service_pb2 as cache_pb
from tokenservice.v1 import (
    cache_service_pb2_grpc,
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2_grpc,
)
from tokenservice.v1 import token_service_pb2 as token_pb
from tokenservice_server.config import Settings
from tokenservice_server.domain.credentials import CredentialKind, new_credential

Call = Callable[[], Awaitable[Any]]
Data = dict[str, Any]
BENCH_SCOPES = ("recipes:read", "recipes:write", "cache:bench:read", "cache:bench:write")
CHECK_TOKENS = 500  # distinct tokens the uncached Check scenario rotates through


@dataclass(frozen=True)
class Target:
    ratio: float | None = None  # throughput / baseline throughput, at least
    round_trips: float | None = None  # Redis round trips per RPC, exactly


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    make_call: Callable[[grpc.aio.Channel, Data, int, int], Call]
    prepare: Callable[[Fixture], Awaitable[Data]] | None = None
    target: Target = Target()
    server: str = "main"


SCENARIOS: dict[str, Scenario] = {}


def scenario(item: Scenario) -> Scenario:
    SCENARIOS[item.name] = item
    return item


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Fixture:
    """The bench process's own connection to a server, with an admin token and a client."""

    channel: grpc.aio.Channel
    admin_id: str
    admin_secret: str
    admin_token: str = ""
    client: tuple[str, str] = ("", "")  # id, secret of the bench client (BENCH_SCOPES)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> Any:  # the generated stubs are typed for the sync channel
        return token_service_pb2_grpc.TokenServiceStub(self.channel)

    async def setup(self) -> None:
        self.admin_token = await self.issue(self.admin_id, self.admin_secret)
        registry = client_registry_pb2_grpc.ClientRegistryStub(self.channel)
        response = await registry.CreateClient(
            client_registry_pb2.CreateClientRequest(
                client=client_registry_pb2.Client(
                    client_id=f"bench-{uuid.uuid4().hex[:8]}",
                    client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                    allowed_grant_types=[token_pb.GRANT_TYPE_CLIENT_CREDENTIALS],
                    allowed_scopes=list(BENCH_SCOPES),
                )
            ),
            metadata=bearer(self.admin_token),
            timeout=10,
        )
        self.client = (response.client.client_id, response.client_secret)

    async def issue(self, client_id: str, secret: str, scope: str = "") -> str:
        response = await self.tokens.IssueToken(
            token_pb.IssueTokenRequest(
                grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=client_id,
                client_secret=secret,
                scope=scope,
            ),
            timeout=10,
        )
        return str(response.access_token)

    async def client_token(self) -> str:
        return await self.issue(*self.client, " ".join(BENCH_SCOPES))


# -- baseline ---------------------------------------------------------------------------------


def _health(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def call() -> None:
        response = await stub.Check(request)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("not serving")

    return call


BASELINE = scenario(
    Scenario("baseline", "grpc.health.v1.Health/Check (no Redis, same interceptors)", _health)
)


# -- ext_authz Check ----------------------------------------------------------------------------


def check_request(token: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/recipes"
    http.headers["authorization"] = f"Bearer {token}"
    request.attributes.source.address.socket_address.address = "192.0.2.10"
    request.attributes.context_extensions["required_scopes"] = "recipes:read"
    return request


def _check(expect: int) -> Callable[[grpc.aio.Channel, Data, int, int], Call]:
    def make(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        requests = itertools.cycle([check_request(t) for t in data["tokens"]])

        async def call() -> None:
            response = await stub.Check(next(requests))
            if response.status.code != expect:
                raise RuntimeError(f"Check answered {response.status.code}, not {expect}")

        return call

    return make


async def _valid_tokens(fixture: Fixture) -> Data:
    return {"tokens": [await fixture.client_token() for _ in range(CHECK_TOKENS)]}


async def _hot_token(fixture: Fixture) -> Data:
    return {"tokens": [await fixture.client_token()]}


async def _unknown_tokens(fixture: Fixture) -> Data:
    return {"tokens": [new_credential(CredentialKind.ACCESS_TOKEN) for _ in range(CHECK_TOKENS)]}


scenario(
    Scenario(
        "check_valid",
        f"ext_authz Check, valid token ({CHECK_TOKENS} distinct, round robin)",
        _check(code_pb2.OK),
        _valid_tokens,
        Target(ratio=0.75, round_trips=1),
        server="uncached",
    )
)
scenario(
    Scenario(
        "check_hot",
        "ext_authz Check, one hot token, hot-token cache off (check_cached: on)",
        _check(code_pb2.OK),
        _hot_token,
        server="uncached",
    )
)
#: The hot-token cache (issue 9 item 3), when this checkout has it: the same hot-token
#: Check on a server started with the cache on (run.SERVERS["cached"]).
HAS_TOKEN_CACHE = "token_cache" in Settings.model_fields
if HAS_TOKEN_CACHE:
    scenario(
        Scenario(
            "check_cached",
            "ext_authz Check, one hot token, hot-token cache on",
            _check(code_pb2.OK),
            _hot_token,
            Target(ratio=0.90, round_trips=0),
            server="cached",
        )
    )
scenario(
    Scenario(
        "check_invalid",
        "ext_authz Check, well-formed unknown token (401)",
        _check(code_pb2.UNAUTHENTICATED),
        _unknown_tokens,
        server="uncached",
    )
)


# -- OAuth2 RPCs ----------------------------------------------------------------------------------


async def _introspect_data(fixture: Fixture) -> Data:
    return {"caller": fixture.admin_token, "tokens": (await _valid_tokens(fixture))["tokens"]}


def _introspect(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    requests = itertools.cycle([token_pb.IntrospectTokenRequest(token=t) for t in data["tokens"]])
    metadata = bearer(data["caller"])

    async def call() -> None:
        response = await stub.IntrospectToken(next(requests), metadata=metadata)
        if not response.active:
            raise RuntimeError("inactive")

    return call


scenario(
    Scenario(
        "introspect",
        "IntrospectToken of a valid token (caller: admin bearer token), cache off",
        _introspect,
        _introspect_data,
        Target(ratio=0.70, round_trips=1),
        server="uncached",
    )
)
scenario(
    Scenario(
        "introspect_cached",
        "IntrospectToken of a valid token, hot-token cache on (the default)",
        _introspect,
        _introspect_data,
        server="cached",
    )
)


async def _client_data(fixture: Fixture) -> Data:
    return {"client_id": fixture.client[0], "secret": fixture.client[1]}


def _issue(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    request = token_pb.IssueTokenRequest(
        grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
        client_id=data["client_id"],
        client_secret=data["secret"],
        scope="recipes:read",
    )

    async def call() -> str:
        response = await stub.IssueToken(request)
        return str(response.access_token)

    return call


scenario(
    Scenario(
        "issue_cc",
        "IssueToken client_credentials",
        _issue,
        _client_data,
        Target(ratio=0.60, round_trips=1),
    )
)


def _revoke(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    """Revokes the tokens of ``data['tokens']`` (issued by the memory phase) once each;
    when they run out, revoking an already revoked token again (counted as ``reused``)."""
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    mine = data["tokens"][worker::workers]
    position = itertools.count()

    async def call() -> None:
        index = next(position)
        request = token_pb.RevokeTokenRequest(
            token=mine[index % len(mine)], client_id=data["client_id"], client_secret=data["secret"]
        )
        await stub.RevokeToken(request)

    return call


scenario(
    Scenario(
        "revoke",
        "RevokeToken of a live access token (client credentials)",
        _revoke,
        None,  # run.py hands it the tokens of the memory phase
    )
)


# -- CacheService ---------------------------------------------------------------------------------


async def _cache_data(fixture: Fixture) -> Data:
    token = await fixture.client_token()
    stub = cache_service_pb2_grpc.CacheServiceStub(fixture.channel)
    for index in range(100):
        await stub.SetValue(
            cache_pb.SetValueRequest(namespace="bench", key=f"hot-{index}", value=b"v" * 100),
            metadata=bearer(token),
            timeout=10,
        )
    return {"token": token}


def _cache_get(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    stub = cache_service_pb2_grpc.CacheServiceStub(channel)
    requests = itertools.cycle(
        [cache_pb.GetValueRequest(namespace="bench", key=f"hot-{i}") for i in range(100)]
    )
    metadata = bearer(data["token"])

    async def call() -> None:
        response = await stub.GetValue(next(requests), metadata=metadata)
        if not response.found:
            raise RuntimeError("miss")

    return call


def _cache_set(channel: grpc.aio.Channel, data: Data, worker: int, workers: int) -> Call:
    stub = cache_service_pb2_grpc.CacheServiceStub(channel)
    keys = itertools.cycle([f"set-{worker}-{i}" for i in range(1000)])
    metadata = bearer(data["token"])
    value = b"v" * 100

    async def call() -> None:
        request = cache_pb.SetValueRequest(namespace="bench", key=next(keys), value=value)
        await stub.SetValue(request, metadata=metadata)

    return call


scenario(
    Scenario(
        "cache_get",
        "CacheService GetValue hit (100-byte value)",
        _cache_get,
        _cache_data,
        Target(ratio=0.75, round_trips=1),
    )
)
scenario(Scenario("cache_set", "CacheService SetValue (100-byte value)", _cache_set, _cache_data))
