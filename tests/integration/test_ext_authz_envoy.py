"""A real Envoy (deploy/envoy/envoy.yaml) in front of an application, asking tokenservice
about every request: what HTTP clients get back and what the application receives.

One Valkey, one tokenservice, one Envoy and one echo upstream serve the whole module
(Envoy takes a moment to start); every test registers its own clients, so their rate
limit buckets never meet.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness.clients import token_for
from tests.harness.envoy import (
    ENVOY_EXAMPLE,
    EchoUpstream,
    EnvoyProcess,
    HttpResponse,
    http_request,
)
from tests.harness.grpc_server import TEST_DEFAULTS, _merge, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.helpers import free_port, tool
from tokenservice.v1 import client_registry_pb2, client_registry_pb2_grpc
from tokenservice_server.app import Application
from tokenservice_server.config import load_settings
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential
from tokenservice_server.domain.rate_limiting import TokenRequestLimits
from tokenservice_server.domain.tokens import TokenRecord

pytestmark = pytest.mark.asyncio(loop_scope="module")

REALM = "recipes"
ROUTE_LIMIT = 50
PERIOD = 3600  # long enough that no bucket refills while a test runs
_SETTINGS: dict[str, Any] = {
    # Everything comes from 127.0.0.1, and most tests share that address: no IP limit
    # here (test_ext_authz_check.py covers it). Clients are unlimited unless their
    # record says otherwise; the write route allows ROUTE_LIMIT per client.
    "rate_limit": {"period": PERIOD, "per_ip": 0, "per_client": 0, "per_route": ROUTE_LIMIT},
    "ext_authz": {"realm": REALM, "stats_flush_interval": 0.1},
}


@dataclass
class Edge:
    """The running stack: HTTP clients talk to ``envoy.port``."""

    envoy: EnvoyProcess
    valkey: RedisProcess
    settings_overrides: dict[str, Any]
    app: Application
    channel: grpc.aio.Channel
    admin_token: str

    async def request(
        self, path: str, token: str | None = None, method: str = "GET", **headers: str
    ) -> HttpResponse:
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        return await http_request(self.envoy.port, path, method=method, headers=sent)

    async def start_app(self) -> None:
        self.app = Application(load_settings(None, self.settings_overrides))
        await self.app.start()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> AsyncIterator[Edge]:
    workdir = tmp_path_factory.mktemp("edge")
    # Append-only, so the Redis outage test can restart it with the data intact.
    valkey = RedisProcess(workdir / "valkey", appendonly=True, name="valkey")
    valkey.start()
    grpc_port = free_port()
    overrides = _merge(
        TEST_DEFAULTS,
        {**_SETTINGS, "listen": f"127.0.0.1:{grpc_port}", "redis": {"url": valkey.url}},
    )
    envoy = EnvoyProcess(workdir / "envoy", tokenservice_port=grpc_port, app_port=echo.port)
    stack: Edge | None = None
    try:
        app = Application(load_settings(None, overrides))
        await app.start()
        await asyncio.to_thread(envoy.start)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            admin = await bootstrap_admin(app)
            admin_token = await issue_token(channel, admin, "tokenservice.admin")
            stack = Edge(envoy, valkey, overrides, app, channel, admin_token)
            yield stack
    finally:
        envoy.stop()
        if stack is not None:
            await stack.app.stop(grace=0)
        await app.stop(grace=0)
        valkey.cleanup()


def _challenge(response: HttpResponse) -> str:
    return response.headers.get("www-authenticate", "")


def _seen(response: HttpResponse) -> dict[str, list[str]]:
    """The request headers the application received."""
    assert response.status == 200, (response.status, response.body)
    headers: dict[str, list[str]] = response.json()["headers"]
    return headers


async def _store_token(
    app: Application, client_id: str, scopes: str, *, subject: str = "", expires_in: int = 900
) -> str:
    """A token as a grant with a user (authorization code) or a past clock would leave it."""
    assert app.components is not None
    record = await app.components.clients.get(client_id)
    assert record is not None
    token = new_credential(CredentialKind.ACCESS_TOKEN)
    now = int(time.time())
    stored = await app.components.tokens.issue_access_token(
        TokenRecord(
            digest=digest(token),
            client_id=client_id,
            scopes=frozenset(scopes.split()),
            issued_at=now - 1000,
            expires_at=now + expires_in,
            jti=f"test-{now}",
            subject=subject,
        ),
        client_generation=record.generation,
        limits=TokenRequestLimits("", "", 60_000, 0, 0),  # unlimited: a test fixture
        ttl=900,
    )
    assert stored
    return token


async def test_the_example_configuration_is_valid() -> None:
    process = await asyncio.create_subprocess_exec(
        tool("envoy"),
        "--mode",
        "validate",
        "-c",
        str(ENVOY_EXAMPLE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert f"configuration '{ENVOY_EXAMPLE}' OK" in output.decode()


async def test_valid_token_reaches_the_application_as_its_client(edge: Edge) -> None:
    client, token = await token_for(edge.channel, edge.admin_token, "recipes:read")

    response = await edge.request(
        "/recipes/42",
        token,
        x_auth_client_id="tokenservice-admin",  # spoofed by the caller
        x_auth_scopes="recipes:write",
        x_auth_subject="alice",
    )

    seen = _seen(response)
    assert seen["x-auth-client-id"] == [client.client_id]
    assert seen["x-auth-scopes"] == ["recipes:read"]
    # client_credentials: no user behind the token, and the caller's claim is dropped.
    assert "x-auth-subject" not in seen
    assert "authorization" not in seen  # the token never reaches the application
    assert response.json()["path"] == "/recipes/42"


async def test_a_spoofed_subject_is_overwritten_by_the_tokens(edge: Edge) -> None:
    client, _ = await token_for(edge.channel, edge.admin_token, "recipes:read")
    token = await _store_token(edge.app, client.client_id, "recipes:read", subject="user-7")

    response = await http_request(
        edge.envoy.port,
        "/recipes",
        headers={"authorization": f"BEARER {token}", "x-auth-subject": "admin"},
    )

    seen = _seen(response)
    assert seen["x-auth-subject"] == ["user-7"]
    assert seen["x-auth-client-id"] == [client.client_id]


async def test_access_log_names_the_caller_never_the_token(edge: Edge) -> None:
    client, token = await token_for(edge.channel, edge.admin_token, "recipes:read")
    await edge.request("/recipes/logged", token)
    await edge.request("/recipes/logged-denied")

    async def entries() -> list[dict[str, Any]]:
        for _ in range(100):  # Envoy flushes its access log about once a second
            found = [e for e in edge.envoy.access_entries() if "logged" in e["path"]]
            if len(found) == 2:
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(f"access log: {edge.envoy.access_entries()[-5:]}")

    allowed, denied = sorted(await entries(), key=lambda entry: entry["path"])
    assert allowed["client_id"] == client.client_id
    assert allowed["authz_result"] == "allowed"
    assert (denied["status"], denied["authz_result"]) == (401, "missing_credentials")
    assert token not in edge.envoy.access_log.read_text()


async def test_unprotected_route_needs_no_token(edge: Edge) -> None:
    response = await edge.request("/healthz")
    assert response.status == 200


async def _revoked_token(edge: Edge) -> str:
    client, token = await token_for(edge.channel, edge.admin_token, "recipes:read")
    registry = client_registry_pb2_grpc.ClientRegistryStub(edge.channel)
    await registry.DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=client.client_id),
        metadata=bearer(edge.admin_token),
        timeout=5,
    )
    return token


async def _expired_token(edge: Edge) -> str:
    client, _ = await token_for(edge.channel, edge.admin_token, "recipes:read")
    return await _store_token(edge.app, client.client_id, "recipes:read", expires_in=-1)


@pytest.mark.parametrize(
    ("case", "expected_challenge"),
    [
        ("missing", f'Bearer realm="{REALM}"'),
        ("basic", f'Bearer realm="{REALM}"'),
        (
            "malformed",
            f'Bearer realm="{REALM}", error="invalid_token", '
            'error_description="the access token is malformed"',
        ),
        (
            "expired",
            f'Bearer realm="{REALM}", error="invalid_token", '
            'error_description="the access token is invalid, expired or revoked"',
        ),
        (
            "revoked",
            f'Bearer realm="{REALM}", error="invalid_token", '
            'error_description="the access token is invalid, expired or revoked"',
        ),
    ],
)
async def test_requests_without_a_valid_token_get_401_and_a_challenge(
    edge: Edge, case: str, expected_challenge: str
) -> None:
    headers = {}
    if case == "basic":
        headers["authorization"] = "Basic dXNlcjpwYXNz"
    elif case == "malformed":
        headers["authorization"] = "Bearer tsat_" + "A" * 49
    elif case == "expired":
        headers["authorization"] = f"Bearer {await _expired_token(edge)}"
    elif case == "revoked":
        headers["authorization"] = f"Bearer {await _revoked_token(edge)}"

    response = await http_request(edge.envoy.port, "/recipes", headers=headers)

    assert response.status == 401
    assert _challenge(response) == expected_challenge
    if case in ("missing", "basic"):
        # RFC 6750 section 3.1: no error information when no credentials were presented.
        assert response.body == b""
    else:
        assert response.json()["error"] == "invalid_token"


async def test_route_requiring_a_scope_the_token_lacks_gets_403(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:read")

    response = await edge.request("/recipes/write", token, method="POST")

    assert response.status == 403
    assert _challenge(response) == (
        f'Bearer realm="{REALM}", error="insufficient_scope", '
        'error_description="the access token lacks a required scope", scope="recipes:write"'
    )
    assert (await edge.request("/recipes", token)).status == 200


async def test_over_the_route_limit_gets_429_with_retry_after(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:read", "recipes:write")

    statuses = [
        (await edge.request("/recipes/write", token, method="POST")).status
        for _ in range(ROUTE_LIMIT)
    ]
    refused = await edge.request("/recipes/write", token, method="POST")

    assert statuses == [200] * ROUTE_LIMIT
    assert refused.status == 429
    # One request per PERIOD / ROUTE_LIMIT seconds refills the bucket, counted from the
    # first request (the loop above took a moment).
    assert PERIOD // ROUTE_LIMIT - 10 < int(refused.headers["retry-after"]) <= PERIOD // ROUTE_LIMIT
    assert refused.json()["error"] == "rate_limited"
    # The route's bucket is the route's: the same client still reads.
    assert (await edge.request("/recipes", token)).status == 200


async def test_client_record_limit_applies_on_every_route(edge: Edge) -> None:
    _, token = await token_for(
        edge.channel, edge.admin_token, "recipes:read", rate_limit_per_minute=2
    )

    statuses = [(await edge.request("/recipes", token)).status for _ in range(2)]
    refused = await edge.request("/recipes/other", token)

    assert statuses == [200, 200]
    assert refused.status == 429
    assert 25 < int(refused.headers["retry-after"]) <= 30  # 2 per minute: one every 30 s


async def test_parallel_requests_allow_exactly_the_limit(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:write")
    # Few enough in flight that each answers within Envoy's 200 ms authorizer deadline
    # even on a busy machine (a late answer is a 503, status_on_error).
    in_flight = asyncio.Semaphore(8)

    async def post() -> int:
        async with in_flight:
            return (await edge.request("/recipes/write", token, method="POST")).status

    statuses = Counter(await asyncio.gather(*(post() for _ in range(2 * ROUTE_LIMIT + 20))))

    assert statuses == {200: ROUTE_LIMIT, 429: ROUTE_LIMIT + 20}


async def test_stalled_redis_gets_envoys_error_status(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:read")
    redis = edge.valkey.client()
    # Scripts count as writes: Check's EVALSHA waits, the UNPAUSE below does not.
    redis.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
    try:
        started = time.monotonic()
        response = await edge.request("/recipes", token)
        elapsed = time.monotonic() - started
    finally:
        redis.execute_command("CLIENT", "UNPAUSE")
    # The authorizer missed Envoy's 200 ms deadline: status_on_error, not a denial.
    assert response.status == 503
    assert elapsed < 1.0


async def test_redis_down_gets_envoys_error_status_and_recovers(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:read")
    edge.valkey.stop()
    try:
        response = await edge.request("/recipes", token)
        # A malformed token is still denied: that answer needs no Redis.
        malformed = await edge.request("/recipes", "tsat_malformed")
    finally:
        edge.valkey.start()
    assert response.status == 503
    assert malformed.status == 401

    for _ in range(50):  # the connection pool reconnects on the next call
        if (await edge.request("/recipes", token)).status == 200:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("tokenservice did not recover from the Redis restart")


async def test_tokenservice_stopped_gets_envoys_error_status(edge: Edge) -> None:
    _, token = await token_for(edge.channel, edge.admin_token, "recipes:read")
    await edge.app.stop(grace=0)
    try:
        response = await edge.request("/recipes", token)
    finally:
        await edge.start_app()
    assert response.status == 503

    for _ in range(50):
        if (await edge.request("/recipes", token)).status == 200:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("Envoy did not reach the restarted tokenservice")
