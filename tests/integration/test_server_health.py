"""grpc.health.v1.Health follows Redis: SERVING while it answers, NOT_SERVING within 5 s
of it going away, SERVING again once it is back, and NOT_SERVING during shutdown."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.grpc_server import AppFactory
from tests.helpers import eventually
from tokenservice_server.app import SERVICES

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(response.status)


async def test_every_service_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert await _status(stub) == SERVING
    for service in SERVICES:
        assert await _status(stub, service.full_name) == SERVING


async def test_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _status(stub, "no.such.Service")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_flips_with_redis_down_and_back(app_factory: AppFactory, valkey: Any) -> None:
    app = await app_factory(redis={"url": valkey.url, "socket_timeout": 0.5})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        assert await _status(stub) == SERVING

        valkey.kill()

        async def not_serving() -> bool:
            return await _status(stub) == NOT_SERVING

        assert await eventually(not_serving, timeout=5.0) < 5.0
        for service in SERVICES:
            assert await _status(stub, service.full_name) == NOT_SERVING
        # Liveness does not follow Redis: restarting the pod would not bring it back.
        assert await _status(stub, "liveness") == SERVING

        valkey.start()

        async def serving() -> bool:
            return await _status(stub) == SERVING

        assert await eventually(serving, timeout=5.0) < 5.0


async def test_watch_streams_the_flip(app_factory: AppFactory, valkey: Any) -> None:
    app = await app_factory(redis={"url": valkey.url, "socket_timeout": 0.5})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = await call.read()
        assert first.status == SERVING
        valkey.kill()
        second = await call.read()
        assert second.status == NOT_SERVING
        call.cancel()
