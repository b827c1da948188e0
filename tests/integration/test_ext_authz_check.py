"""envoy.service.auth.v3.Authorization/Check over gRPC, as Envoy calls it: the response
shapes, the rate-limit buckets, the Redis round trips, the counters, and the failures
that are RPC errors (and only those)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.harness.clients import token_for
from tests.harness.grpc_server import AppFactory, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.harness.redis_writes import on_redis_writes
from tests.helpers import eventually
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import CredentialKind, new_credential

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
MALFORMED = "tsat_" + "x" * 49  # right length, wrong checksum


def _well_formed_unknown() -> str:
    return new_credential(CredentialKind.ACCESS_TOKEN)


def check_request(
    token: str | None = None,
    *,
    ip: str = "192.0.2.10",
    extensions: dict[str, str] | None = None,
    **headers: str,
) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/recipes"
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    for name, value in headers.items():
        http.headers[name.replace("_", "-")] = value
    request.attributes.source.address.socket_address.address = ip
    request.attributes.context_extensions.update(extensions or {})
    return request


class Edge:
    """A server with its admin token and an Authorization stub."""

    def __init__(self, app: Application, channel: grpc.aio.Channel, admin_token: str) -> None:
        self.app = app
        self.channel = channel
        self.admin_token = admin_token
        self.stub = external_auth_pb2_grpc.AuthorizationStub(channel)

    async def check(
        self, request: external_auth_pb2.CheckRequest, timeout: float = 5
    ) -> external_auth_pb2.CheckResponse:
        return await self.stub.Check(request, timeout=timeout)

    async def token(self, *scopes: str, **options: Any) -> tuple[str, str]:
        client, token = await token_for(self.channel, self.admin_token, *scopes, **options)
        return client.client_id, token

    def scrape(self) -> str:
        assert self.app.addresses is not None
        address = self.app.addresses
        url = f"http://{address.metrics_host}:{address.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
async def edge_factory(valkey: RedisProcess, app_factory: AppFactory) -> AsyncIterator[Any]:
    # valkey first: torn down after the servers, so their last counts can be written.
    channels: list[grpc.aio.Channel] = []

    async def make(**overrides: Any) -> Edge:
        overrides.setdefault("redis", {"url": valkey.url})
        app = await app_factory(**overrides)
        assert app.addresses is not None
        channel = grpc.aio.insecure_channel(app.addresses.grpc_target)
        channels.append(channel)
        admin = await bootstrap_admin(app)
        return Edge(app, channel, await issue_token(channel, admin, "tokenservice.admin"))

    yield make
    for channel in channels:
        await channel.close()


def _headers(options: Any) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}


# -- response shapes --------------------------------------------------------------------------


async def test_allowed_check_sets_identity_headers_and_removes_credentials(
    edge_factory: Any,
) -> None:
    edge = await edge_factory(ext_authz={"headers_to_remove": ["authorization", "Cookie"]})
    client_id, token = await edge.token("recipes:read", "recipes:write")

    response = await edge.check(check_request(token, x_auth_subject="spoofed"))

    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert _headers(ok.headers) == {
        "x-auth-client-id": client_id,
        "x-auth-scopes": "recipes:read recipes:write",
    }
    # Never appended to what the caller sent: each header replaces the caller's copy.
    assert {option.append_action for option in ok.headers} == {OVERWRITE}
    assert not any(option.HasField("append") for option in ok.headers)
    # No user behind a client_credentials token: the caller's x-auth-subject goes.
    assert list(ok.headers_to_remove) == ["authorization", "cookie", "x-auth-subject"]
    assert dict(response.dynamic_metadata) == {"result": "allowed", "client_id": client_id}
    assert not response.HasField("denied_response")


async def test_denials_are_normal_responses_with_the_http_answer(edge_factory: Any) -> None:
    edge = await edge_factory(ext_authz={"realm": "api.example"})
    _, token = await edge.token("recipes:read")
    scoped = {"required_scopes": "recipes:read recipes:admin"}

    missing = await edge.check(check_request())
    malformed = await edge.check(check_request(MALFORMED))
    unknown = await edge.check(check_request(_well_formed_unknown()))
    forbidden = await edge.check(check_request(token, extensions=scoped))

    for response, code, status in [
        (missing, code_pb2.UNAUTHENTICATED, 401),
        (malformed, code_pb2.UNAUTHENTICATED, 401),
        (unknown, code_pb2.UNAUTHENTICATED, 401),
        (forbidden, code_pb2.PERMISSION_DENIED, 403),
    ]:
        assert response.status.code == code
        assert response.denied_response.status.code == status
        assert not response.HasField("ok_response")
    assert _headers(missing.denied_response.headers) == {
        "www-authenticate": 'Bearer realm="api.example"'
    }
    assert missing.denied_response.body == ""
    assert 'error="invalid_token"' in _headers(unknown.denied_response.headers)["www-authenticate"]
    challenge = _headers(forbidden.denied_response.headers)["www-authenticate"]
    assert challenge.startswith('Bearer realm="api.example", error="insufficient_scope"')
    assert challenge.endswith('scope="recipes:admin recipes:read"')
    assert dict(forbidden.dynamic_metadata)["result"] == "insufficient_scope"


async def test_route_audience_must_be_one_of_the_tokens(edge_factory: Any) -> None:
    edge = await edge_factory()
    _, token = await edge.token("recipes:read")  # a client without audiences

    untargeted = await edge.check(check_request(token))
    targeted = await edge.check(check_request(token, extensions={"audience": "billing"}))

    assert untargeted.status.code == code_pb2.OK
    assert targeted.denied_response.status.code == 401
    challenge = _headers(targeted.denied_response.headers)["www-authenticate"]
    assert 'error_description="the access token is not meant for this audience"' in challenge


async def test_malformed_route_configuration_is_an_rpc_error(edge_factory: Any) -> None:
    edge = await edge_factory()
    _, token = await edge.token("recipes:read")
    request = check_request(token, extensions={"rate_limit_key": "no spaces please"})

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await edge.check(request)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "context_extensions.rate_limit_key" in str(caught.value.details())


# -- Redis round trips ------------------------------------------------------------------------


class RoundTrips:
    """Counts what the server's Redis clients send: one write is one round trip (a
    pipeline is one write), so this is the number of round trips, whatever runs inside a
    script (``tests/harness/redis_writes.py``: every client path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bytes] = []
        on_redis_writes(monkeypatch, self.sent.append)

    def count(self, word: bytes) -> int:
        return sum(word in packed.upper() for packed in self.sent)


def _command_calls(redis: Any) -> Counter[str]:
    """Server-side command counts (commands a script runs are counted too), without the
    health probe's PINGs and these INFO calls."""
    stats = redis.info("commandstats")
    calls = Counter(
        {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    )
    for ignored in ("ping", "info"):
        calls.pop(ignored, None)
    return calls


async def test_each_check_is_one_redis_round_trip(
    edge_factory: Any, valkey: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = await edge_factory(health_interval=60, ext_authz={"stats_flush_interval": 300})
    _, token = await edge.token("recipes:read")
    route = {"required_scopes": "recipes:read", "rate_limit_key": "recipes"}
    await edge.check(check_request(token, extensions=route))  # loads the script once
    redis = valkey.client()
    server_before = _command_calls(redis)
    round_trips = RoundTrips(monkeypatch)

    for index in range(20):
        response = await edge.check(check_request(token, ip=f"10.0.0.{index}", extensions=route))
        assert response.status.code == code_pb2.OK
    for _ in range(5):
        await edge.check(check_request(_well_formed_unknown()))

    assert len(round_trips.sent) == 25
    assert round_trips.count(b"EVALSHA") == 25
    server = _command_calls(redis) - server_before
    # Token lookup and every bucket happened inside those 25 scripts.
    assert server["evalsha"] == 25
    assert server["hmget"] == 25  # the token's fields
    assert server["exists"] == 20  # the blacklist marker of the 20 live tokens


async def test_malformed_or_missing_tokens_never_reach_redis(
    edge_factory: Any, valkey: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = await edge_factory(health_interval=60, ext_authz={"stats_flush_interval": 300})
    redis = valkey.client()
    before = _command_calls(redis)
    round_trips = RoundTrips(monkeypatch)

    for request in (
        check_request(),
        check_request(MALFORMED),
        check_request("x"),
        check_request(""),
    ):
        response = await edge.check(request)
        assert response.denied_response.status.code == 401

    assert round_trips.sent == []
    assert _command_calls(redis) - before == Counter()


# -- rate limits ------------------------------------------------------------------------------


async def test_source_ip_bucket_counts_every_token_from_that_address(edge_factory: Any) -> None:
    edge = await edge_factory(rate_limit={"per_ip": 3, "period": 3600})
    _, token = await edge.token("recipes:read")

    first = [await edge.check(check_request(token, ip="198.51.100.7")) for _ in range(2)]
    # An unknown (guessed) token from the same address counts too.
    guessed = await edge.check(check_request(_well_formed_unknown(), ip="198.51.100.7"))
    refused = await edge.check(check_request(token, ip="198.51.100.7"))
    elsewhere = await edge.check(check_request(token, ip="198.51.100.8"))

    assert [r.status.code for r in first] == [code_pb2.OK, code_pb2.OK]
    assert guessed.denied_response.status.code == 401
    assert refused.status.code == code_pb2.RESOURCE_EXHAUSTED
    assert refused.denied_response.status.code == 429
    assert _headers(refused.denied_response.headers)["retry-after"] == "1200"  # 3600 s / 3
    assert dict(refused.dynamic_metadata)["rate_limited_by"] == "ip"
    assert elsewhere.status.code == code_pb2.OK


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarded_for_names_the_client_only_when_trusted(
    edge_factory: Any, trusted: bool
) -> None:
    edge = await edge_factory(
        rate_limit={"per_ip": 1, "period": 3600},
        ext_authz={"trust_x_forwarded_for": trusted},
    )
    _, token = await edge.token()

    codes = [
        (await edge.check(check_request(token, ip="10.1.1.1", x_forwarded_for=hops))).status.code
        for hops in ("203.0.113.1, 10.9.9.9", "203.0.113.2", " 2001:DB8::1 , 10.1.1.1")
    ]

    if trusted:  # three different first hops: three buckets
        assert codes == [code_pb2.OK] * 3
    else:  # anyone can write that header: the peer address counts
        assert codes == [code_pb2.OK, code_pb2.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED]


async def test_parallel_checks_allow_exactly_the_limit(
    edge_factory: Any, valkey: RedisProcess
) -> None:
    edge = await edge_factory(rate_limit={"per_route": 50, "per_ip": 0, "period": 3600})
    client_id, token = await edge.token("recipes:write")
    request = check_request(token, extensions={"rate_limit_key": "recipes-write"})

    responses = await asyncio.gather(*(edge.check(request, timeout=30) for _ in range(200)))

    results = Counter(dict(response.dynamic_metadata)["result"] for response in responses)
    assert results == {"allowed": 50, "rate_limited": 150}
    bucket = f"auth:rate_limit:route:recipes-write:{client_id}"
    assert 0 < valkey.client().pttl(bucket) <= 3600 * 1000  # no bucket outlives its period


# -- counters ---------------------------------------------------------------------------------


async def test_checks_are_counted_in_auth_stats_and_prometheus(
    edge_factory: Any, valkey: RedisProcess
) -> None:
    edge = await edge_factory(
        rate_limit={"per_ip": 2, "period": 3600}, ext_authz={"stats_flush_interval": 0.05}
    )
    _, token = await edge.token("recipes:read")
    for request in [
        check_request(token),
        check_request(token),
        check_request(token),  # over the IP limit
        check_request(MALFORMED),  # denied without Redis, counted all the same
        check_request(),
    ]:
        await edge.check(request)

    redis = valkey.client()

    async def flushed() -> bool:
        return bool(redis.hget("auth_stats", "checks_denied") == "3")

    await eventually(flushed, timeout=5)
    assert redis.hmget("auth_stats", ["checks_allowed", "checks_denied"]) == ["2", "3"]
    text = edge.scrape()
    expected = {
        "allowed": 2,
        "rate_limited": 1,
        "invalid_token": 1,
        "missing_credentials": 1,
        "insufficient_scope": 0,
    }
    for result, count in expected.items():
        assert f'tokenservice_check_total{{result="{result}"}} {count}.0' in text
    assert 'tokenservice_rate_limited_total{bucket="ip"} 1.0' in text


async def test_counts_pending_at_shutdown_are_written(
    edge_factory: Any, valkey: RedisProcess
) -> None:
    edge = await edge_factory(ext_authz={"stats_flush_interval": 300})
    await edge.check(check_request())

    await edge.app.stop(grace=0)

    assert valkey.client().hget("auth_stats", "checks_denied") == "1"


# -- failures that are RPC errors -------------------------------------------------------------


async def test_unreachable_redis_is_an_rpc_error_not_a_denial(
    edge_factory: Any, valkey: RedisProcess
) -> None:
    edge = await edge_factory()
    _, token = await edge.token("recipes:read")
    valkey.stop()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await edge.check(check_request(token), timeout=15)
        malformed = await edge.check(check_request(MALFORMED))
    finally:
        valkey.start()

    # UNAVAILABLE makes Envoy apply status_on_error / failure_mode_allow.
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert malformed.denied_response.status.code == 401
    assert re.search(r'grpc_code="UNAVAILABLE",grpc_method="Check"', edge.scrape())


async def test_the_callers_deadline_is_honoured(edge_factory: Any, valkey: RedisProcess) -> None:
    edge = await edge_factory()
    _, token = await edge.token("recipes:read")
    redis = valkey.client()
    redis.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await edge.check(check_request(token), timeout=0.2)  # Envoy's default
        elapsed = time.monotonic() - started
    finally:
        redis.execute_command("CLIENT", "UNPAUSE")

    # The server gives up its Redis attempt just before the deadline (storage/retry.py)
    # and answers UNAVAILABLE, unless the answer misses the small margin (40 ms here).
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert elapsed < 0.6
    # The server gave up too and its next answer is prompt and right.
    assert (await edge.check(check_request(token))).status.code == code_pb2.OK
