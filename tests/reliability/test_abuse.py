"""Abuse (issue 10, item 5): brute force of client secrets is rate limited and metered, and
guessed tokens are refused by their checksum before any Redis work. The flood-of-garbage
Check figure (valid checks slowed at most 2x) is a bench scenario: bench/abuse_flood.py."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter

import grpc
import pytest
import redis
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.harness.clients import register_client
from tests.harness.grpc_server import AppFactory, Credentials, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.integration.test_ext_authz_check import check_request
from tokenservice.v1 import token_service_pb2, token_service_pb2_grpc
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import CredentialKind, new_credential

ATTEMPTS = 60


def _scrape(app: Application) -> str:
    assert app.addresses is not None
    url = f"http://{app.addresses.metrics_host}:{app.addresses.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _brute_force(channel: grpc.aio.Channel, client_id: str) -> Counter[str]:
    codes: Counter[str] = Counter()
    for attempt in range(ATTEMPTS):
        try:
            await issue_token(channel, Credentials(client_id, f"tscs_guess{attempt}"))
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1
        else:
            codes["OK"] += 1
    return codes


@pytest.mark.parametrize(
    ("limits", "bucket"),
    [
        ({"token_per_ip": 20, "token_per_client": 0}, "issue_ip"),
        ({"token_per_ip": 0, "token_per_client": 20}, "issue_client"),
    ],
)
async def test_secret_brute_force_is_rate_limited_and_metered(
    app_factory: AppFactory, valkey: RedisProcess, limits: dict[str, int], bucket: str
) -> None:
    app = await app_factory(redis={"url": valkey.url}, rate_limit={"period": 3600, **limits})
    assert app.addresses is not None
    admin = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        admin_token = await issue_token(channel, admin)  # one request of the IP's budget
        victim = await register_client(channel, admin_token)
        before = _scrape(app)
        codes = await _brute_force(channel, victim.client_id)
    used = 1 if bucket == "issue_ip" else 0
    # Every guess inside the budget is refused as a wrong secret; every one after it is
    # refused before the secret is even checked.
    assert codes == Counter(
        {"UNAUTHENTICATED": 20 - used, "RESOURCE_EXHAUSTED": ATTEMPTS - 20 + used}
    ), codes
    after = _scrape(app)
    limited = _metric(after, "tokenservice_rate_limited_total", bucket=bucket) - _metric(
        before, "tokenservice_rate_limited_total", bucket=bucket
    )
    assert limited == ATTEMPTS - 20 + used
    by_result = {
        result: _metric(after, "tokenservice_tokens_issued_total", result=result)
        - _metric(before, "tokenservice_tokens_issued_total", result=result)
        for result in ("invalid_client", "rate_limited", "issued")
    }
    assert by_result == {
        "invalid_client": 20 - used,
        "rate_limited": ATTEMPTS - 20 + used,
        "issued": 0,
    }, by_result


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


def _guesses(token: str) -> list[str]:
    """Plausible guesses: one character changed anywhere past the prefix, truncated,
    extended, random bodies of the right length."""
    flips = [
        token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        for index in range(5, len(token))
    ]
    return [*flips, token[:-1], token + "A", "tsat_" + "x" * (len(token) - 5)]


async def test_guessed_tokens_cost_no_redis_work_in_check_and_introspect(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    app = await app_factory(redis={"url": valkey.url}, health_interval=60)
    assert app.addresses is not None
    admin = await bootstrap_admin(app)
    sync = valkey.client()
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        admin_token = await issue_token(channel, admin)
        victim = await register_client(channel, admin_token)
        real = await issue_token(channel, victim)
        guesses = _guesses(real)
        check = external_auth_pb2_grpc.AuthorizationStub(channel)

        before = _command_calls(sync)
        for guess in guesses:
            answer = await check.Check(check_request(guess), timeout=5)
            assert answer.status.code == code_pb2.UNAUTHENTICATED
        assert _commands_since(sync, before) == Counter(), "Check did Redis work for a guess"

        # Introspection: the caller's bearer token is authenticated (and cached after the
        # first call); the token asked about is refused by its checksum alone.
        stub = token_service_pb2_grpc.TokenServiceStub(channel)

        async def introspect(token: str) -> bool:
            request = token_service_pb2.IntrospectTokenRequest(token=token)
            answer = await stub.IntrospectToken(request, metadata=bearer(admin_token), timeout=5)
            return bool(answer.active)

        assert await introspect(real)  # warms the caller's authentication
        before = _command_calls(sync)
        await introspect(guesses[0])
        one = _commands_since(sync, before)
        before = _command_calls(sync)
        for guess in guesses:
            assert not await introspect(guess)
        many = _commands_since(sync, before)
        # The work per guess is the caller's authentication only: a well-formed unknown
        # token costs a lookup on top.
        assert many == Counter({name: count * len(guesses) for name, count in one.items()})
        before = _command_calls(sync)
        assert not await introspect(new_credential(CredentialKind.ACCESS_TOKEN))
        lookup = _commands_since(sync, before) - one
        assert sum(lookup.values()) >= 1, "positive control: a well-formed token is looked up"
