"""The real gRPC server, in-process on port 0, against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest

from tokenservice_server.app import Application
from tokenservice_server.config import load_settings

AppFactory = Callable[..., Awaitable[Application]]

TEST_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "metrics_listen": "127.0.0.1:0",
    "health_interval": 0.2,
    "shutdown_grace": 2.0,
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
async def server(app_factory: AppFactory, valkey: Any) -> Application:
    """A server on a fresh standalone Valkey."""
    return await app_factory(redis={"url": valkey.url})


@pytest.fixture
async def channel(server: Application) -> AsyncIterator[grpc.aio.Channel]:
    assert server.addresses is not None
    async with grpc.aio.insecure_channel(server.addresses.grpc_target) as chan:
        yield chan
