"""Every RPC is counted with the ecosystem's metric names, logged once, and an escaped
exception never reaches the caller as a traceback."""

from __future__ import annotations

import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.harness.grpc_server import AppFactory, bearer
from tokenservice_server.app import SERVICES, Application

_EMPTY = empty_pb2.Empty


def _scrape(app: Application) -> str:
    assert app.addresses is not None
    url = f"http://{app.addresses.metrics_host}:{app.addresses.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_use_the_grpc_ecosystem_names(
    server: Application, channel: grpc.aio.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
    text = _scrape(server)
    labels = 'grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"'
    assert f"grpc_server_started_total{{{labels}}} 3.0" in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 3.0' in text
    assert f"grpc_server_handling_seconds_count{{{labels}}} 3.0" in text
    assert "grpc_server_handling_seconds_bucket{" in text
    assert "tokenservice_redis_up 1.0" in text


# Bodies that are valid for the token endpoint would issue tokens; an empty request must
# be refused with a clear client error instead.
_CLEAN_FAILURES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


async def test_every_rpc_is_built_and_refuses_empty_requests_cleanly(
    server: Application, channel: grpc.aio.Channel, admin_token: str
) -> None:
    """No method of the contract answers UNIMPLEMENTED any more, and none answers an empty
    request with INTERNAL or UNKNOWN (bad input gets a clear error)."""
    answers: dict[str, grpc.StatusCode] = {}
    for service in SERVICES:
        for method in service.methods:
            call = channel.unary_unary(
                f"/{service.full_name}/{method.name}",
                request_serializer=lambda _: b"",
                response_deserializer=lambda data: data,
            )
            try:
                await call(None, timeout=5, metadata=bearer(admin_token))
            except grpc.aio.AioRpcError as exc:
                answers[method.full_name] = exc.code()
            else:
                answers[method.full_name] = grpc.StatusCode.OK
    assert len(answers) >= 24
    unclean = {
        name: code.name
        for name, code in answers.items()
        if code not in _CLEAN_FAILURES and code is not grpc.StatusCode.OK
    }
    assert not unclean, unclean
    # GetTokenStats legitimately answers an empty request; Check answers with a denial.
    assert answers["tokenservice.v1.TokenService.GetTokenStats"] is grpc.StatusCode.OK
    text = _scrape(server)
    assert (
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="IssueToken",'
        'grpc_service="tokenservice.v1.TokenService",grpc_type="unary"} 1.0'
    ) in text


def _failing_service(error: Exception) -> grpc.GenericRpcHandler:
    async def fail(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise error

    handler = grpc.unary_unary_rpc_method_handler(
        fail,
        request_deserializer=_EMPTY.FromString,
        response_serializer=_EMPTY.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("test.Failing", {"Fail": handler})


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (RuntimeError("secret internal detail"), grpc.StatusCode.INTERNAL, "internal error"),
        (
            RedisConnectionError("Error 111 connecting to 10.0.0.9:6379"),
            grpc.StatusCode.UNAVAILABLE,
            "storage temporarily unavailable",
        ),
    ],
)
async def test_escaped_exceptions_become_clean_statuses(
    app_factory: AppFactory,
    valkey: Any,
    error: Exception,
    code: grpc.StatusCode,
    details: str,
) -> None:
    app = await app_factory(extra_handlers=[_failing_service(error)], redis={"url": valkey.url})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as chan:
        call = chan.unary_unary(
            "/test.Failing/Fail",
            request_serializer=_EMPTY.SerializeToString,
            response_deserializer=_EMPTY.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(_EMPTY(), timeout=2)
    assert caught.value.code() is code
    assert caught.value.details() == details
    assert "Traceback" not in (caught.value.debug_error_string() or "")
    text = _scrape(app)
    assert f'grpc_server_handled_total{{grpc_code="{code.name}",grpc_method="Fail"' in text
