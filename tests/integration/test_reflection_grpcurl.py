"""Operators discover and call the server with the real grpcurl binary over reflection."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import tool
from tokenservice_server.app import Application

EXPECTED_SERVICES = {
    "tokenservice.v1.TokenService",
    "tokenservice.v1.ClientRegistry",
    "tokenservice.v1.CacheService",
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def _grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        tool("grpcurl"),
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_list_shows_every_service(server: Application) -> None:
    assert server.addresses is not None
    listed = set((await _grpcurl(server.addresses.grpc_target, "list")).split())
    assert listed == EXPECTED_SERVICES


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("tokenservice.v1.TokenService", "IssueToken"),
        ("tokenservice.v1.ClientRegistry", "ListClients"),
        ("tokenservice.v1.CacheService", "InvalidateNamespace"),
        ("envoy.service.auth.v3.Authorization", "Check"),
        ("grpc.health.v1.Health", "Watch"),
    ],
)
async def test_describe_shows_the_methods(server: Application, service: str, method: str) -> None:
    assert server.addresses is not None
    described = await _grpcurl(server.addresses.grpc_target, "describe", service)
    assert f"rpc {method} (" in described


async def test_describe_a_request_message(server: Application) -> None:
    assert server.addresses is not None
    described = await _grpcurl(
        server.addresses.grpc_target, "describe", "tokenservice.v1.IssueTokenRequest"
    )
    assert "message IssueTokenRequest {" in described
    assert "grant_type = " in described


async def test_health_check_via_grpcurl(server: Application) -> None:
    assert server.addresses is not None
    answer = await _grpcurl(server.addresses.grpc_target, "grpc.health.v1.Health/Check")
    assert json.loads(answer) == {"status": "SERVING"}
