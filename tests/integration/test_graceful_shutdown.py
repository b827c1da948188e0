"""SIGTERM semantics, in-process: NOT_SERVING first, then drain in-flight RPCs within
the grace period, then refuse new ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.grpc_server import AppFactory

_EMPTY = empty_pb2.Empty


def _slow_service(seconds: float) -> grpc.GenericRpcHandler:
    async def slow(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await asyncio.sleep(seconds)
        return _EMPTY()

    handler = grpc.unary_unary_rpc_method_handler(
        slow,
        request_deserializer=_EMPTY.FromString,
        response_serializer=_EMPTY.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("test.Slow", {"Sleep": handler})


def _sleep_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        "/test.Slow/Sleep",
        request_serializer=_EMPTY.SerializeToString,
        response_deserializer=_EMPTY.FromString,
    )


async def test_in_flight_rpcs_finish_and_health_goes_not_serving_first(
    app_factory: AppFactory, valkey: Any
) -> None:
    app = await app_factory(extra_handlers=[_slow_service(1.0)], redis={"url": valkey.url})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as chan:
        watch = health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(_sleep_call(chan)(_EMPTY(), timeout=10))
        await asyncio.sleep(0.2)

        stopping = asyncio.ensure_future(app.stop(grace=5.0))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await in_flight  # completed normally inside the grace period
        await stopping

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert caught.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }


async def test_grace_period_bounds_the_drain(app_factory: AppFactory, valkey: Any) -> None:
    app = await app_factory(extra_handlers=[_slow_service(30.0)], redis={"url": valkey.url})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as chan:
        in_flight = asyncio.ensure_future(_sleep_call(chan)(_EMPTY(), timeout=60))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await app.stop(grace=0.5)
        assert time.monotonic() - started < 5.0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await in_flight
        assert caught.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
