"""The real gRPC server, in-process on port 0, against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.helpers import eventually
from tokenservice.v1 import token_service_pb2, token_service_pb2_grpc
from tokenservice_server.app import Application
from tokenservice_server.config import load_settings
from tokenservice_server.domain.bootstrap import admin_client_spec
from tokenservice_server.domain.credentials import CredentialKind, new_credential
from tokenservice_server.domain.token_cache import TokenCache

AppFactory = Callable[..., Awaitable[Application]]

TEST_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "metrics_listen": "127.0.0.1:0",
    "health_interval": 0.2,
    "shutdown_grace": 2.0,
    "auth": {"secret_pepper": "test-pepper-0123456789abcdef0123456789abcdef"},
}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
async def app_factory() -> AsyncIterator[AppFactory]:
    """Start servers with settings overrides; every one is stopped at teardown."""
    started: list[Application] = []

    async def start(
        extra_handlers: Sequence[grpc.GenericRpcHandler] = (), **overrides: Any
    ) -> Application:
        settings = load_settings(None, _merge(TEST_DEFAULTS, overrides))
        app = Application(settings, extra_handlers=extra_handlers)
        await app.start()
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop(grace=0)


@pytest.fixture
async def server(valkey: Any, app_factory: AppFactory) -> Application:
    """A server on a fresh standalone Valkey (set up first, so it stops after the server)."""
    return await app_factory(redis={"url": valkey.url})


@pytest.fixture
async def channel(server: Application) -> AsyncIterator[grpc.aio.Channel]:
    assert server.addresses is not None
    async with grpc.aio.insecure_channel(server.addresses.grpc_target) as chan:
        yield chan


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str


async def bootstrap_admin(app: Application, client_id: str = "test-admin") -> Credentials:
    """The admin client as `tokenservice init` would create it."""
    assert app.components is not None
    secret = new_credential(CredentialKind.CLIENT_SECRET)
    await app.components.registry.bootstrap(client_id, admin_client_spec(), secret)
    return Credentials(client_id, secret)


async def issue_token(channel: grpc.aio.Channel, credentials: Credentials, scope: str = "") -> str:
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    response = await stub.IssueToken(
        token_service_pb2.IssueTokenRequest(
            grant_type=token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            scope=scope,
        ),
        timeout=5,
    )
    return str(response.access_token)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def admin_credentials(server: Application) -> Credentials:
    return await bootstrap_admin(server)


@pytest.fixture
async def admin_token(channel: grpc.aio.Channel, admin_credentials: Credentials) -> str:
    return await issue_token(channel, admin_credentials)


async def hot_token_cache_in_use(app: Application, timeout: float = 10.0) -> TokenCache:
    """The app's hot-token cache, once its revocation feed is subscribed (before that the
    cache is bypassed: every lookup goes to Redis)."""
    assert app.components is not None
    cache = app.components.token_cache
    assert cache is not None

    async def subscribed() -> bool:
        return cache.up

    await eventually(subscribed, timeout=timeout)
    return cache
