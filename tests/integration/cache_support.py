"""Helpers of the CacheService tests: callers with chosen scopes, error checks, and a
look at what the cache database holds and receives."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Iterable
from typing import Any

import grpc
import pytest
import redis

from tests.harness.grpc_server import Credentials, bearer, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_info
from tokenservice.v1 import cache_service_pb2 as pb
from tokenservice.v1 import cache_service_pb2_grpc, client_registry_pb2, token_service_pb2
from tokenservice.v1.client_registry_pb2_grpc import ClientRegistryStub
from tokenservice_server.app import Application

CACHE_DB = 1  # redis.cache_db default
AUTH_DB = 0  # redis.auth_db default


class Cache:
    """The CacheService stub with one caller's bearer token attached."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.stub = cache_service_pb2_grpc.CacheServiceStub(channel)
        self.metadata = bearer(token)

    async def get(self, namespace: str, key: str, **fields: Any) -> pb.GetValueResponse:
        request = pb.GetValueRequest(namespace=namespace, key=key, **fields)
        return await self.stub.GetValue(request, metadata=self.metadata, timeout=10)

    async def set(
        self, namespace: str, key: str, value: bytes, ttl: int | None = None, **fields: Any
    ) -> int:
        request = pb.SetValueRequest(namespace=namespace, key=key, value=value, **fields)
        if ttl is not None:
            request.ttl_seconds = ttl
        response = await self.stub.SetValue(request, metadata=self.metadata, timeout=10)
        return response.evicted_count

    async def delete(self, namespace: str, key: str) -> bool:
        request = pb.DeleteValueRequest(namespace=namespace, key=key)
        response = await self.stub.DeleteValue(request, metadata=self.metadata, timeout=10)
        return response.deleted

    async def batch_get(self, namespace: str, keys: Iterable[str]) -> list[pb.CacheLookup]:
        request = pb.BatchGetValuesRequest(namespace=namespace, keys=list(keys))
        response = await self.stub.BatchGetValues(request, metadata=self.metadata, timeout=10)
        return list(response.lookups)

    async def batch_set(
        self, namespace: str, entries: Iterable[pb.CacheEntry], ttl: int | None = None
    ) -> int:
        request = pb.BatchSetValuesRequest(namespace=namespace, entries=list(entries))
        if ttl is not None:
            request.ttl_seconds = ttl
        response = await self.stub.BatchSetValues(request, metadata=self.metadata, timeout=30)
        return response.evicted_count

    async def invalidate(self, namespace: str) -> int:
        request = pb.InvalidateNamespaceRequest(namespace=namespace)
        response = await self.stub.InvalidateNamespace(request, metadata=self.metadata, timeout=10)
        return response.invalidated_count

    async def stats(self, namespace: str) -> pb.GetNamespaceStatsResponse:
        request = pb.GetNamespaceStatsRequest(namespace=namespace)
        return await self.stub.GetNamespaceStats(request, metadata=self.metadata, timeout=10)


def entry(key: str, value: bytes, ttl: int | None = None) -> pb.CacheEntry:
    message = pb.CacheEntry(key=key, value=value)
    if ttl is not None:
        message.ttl_seconds = ttl
    return message


async def cache_caller(
    channel: grpc.aio.Channel, admin_token: str, client_id: str, scopes: Iterable[str]
) -> Cache:
    """Register a service allowed exactly ``scopes`` and return its cache stub."""
    registry = ClientRegistryStub(channel)
    created = await registry.CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_id=client_id,
                display_name=client_id,
                client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                allowed_grant_types=[token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS],
                allowed_scopes=list(scopes),
            )
        ),
        metadata=bearer(admin_token),
        timeout=10,
    )
    token = await issue_token(channel, Credentials(client_id, created.client_secret))
    return Cache(channel, token)


async def expect_error(
    call: Awaitable[Any],
    code: grpc.StatusCode,
    reason: str,
    *,
    field: str | None = None,
    limit: int | None = None,
) -> grpc.aio.AioRpcError:
    """The call fails with ``code`` and exactly this ErrorInfo (reason, field, limit)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    info = error_info(error)
    assert error.code() is code, (error.code(), error.details())
    assert info is not None, f"no ErrorInfo in {error.code()}: {error.details()}"
    assert (info.domain, info.reason) == ("tokenservice", reason), (info, error.details())
    if field is not None:
        assert info.metadata.get("field") == field, (dict(info.metadata), error.details())
    if limit is not None:
        assert info.metadata.get("limit") == str(limit), (dict(info.metadata), error.details())
    return error


def cache_db(valkey: RedisProcess) -> redis.Redis:
    """A raw client on the cache database (bytes values)."""
    return valkey.client(db=CACHE_DB, decode_responses=False)


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of the database with its type, content and TTL state."""
    found: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        content: Any
        if kind == b"hash":
            content = client.hgetall(key)
        elif kind == b"zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            content = client.get(key)
        else:
            content = None
        found[key] = (kind, content, client.pttl(key) > 0)
    return found


class CommandLog:
    """Every command the server receives while open (MONITOR), for counting round trips.

    Commands a Lua script runs are marked ``lua``; everything else was a request from a
    client, so the commands an RPC sent to the cache DB are exactly its round trips.
    """

    _STOP = "cache-test-stop-marker"

    def __init__(self, server: RedisProcess) -> None:
        self._server = server
        self._monitor_client = server.client()
        self._monitor = self._monitor_client.monitor()
        self.commands: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> CommandLog:
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread.start()
        return self

    def _follow(self) -> None:
        while True:
            command = self._monitor.next_command()
            if command["command"] == f"ECHO {self._STOP}":
                return
            self.commands.append(command)

    def __exit__(self, *exc: object) -> None:
        self._server.client().echo(self._STOP)
        self._thread.join(timeout=10)
        self._monitor.__exit__()
        self._monitor_client.close()

    def requests(self, db: int = CACHE_DB) -> list[str]:
        """Names of the commands clients sent to database ``db`` (not those of scripts)."""
        return [
            str(command["command"]).split(" ", 1)[0].upper()
            for command in self.commands
            if command["db"] == db and command["client_type"] != "lua"
        ]

    def script_commands(self, db: int = CACHE_DB) -> list[str]:
        """Names of the commands Lua scripts ran on database ``db``, in order."""
        return [
            str(command["command"]).split(" ", 1)[0].upper()
            for command in self.commands
            if command["db"] == db and command["client_type"] == "lua"
        ]


def redis_target(app: Application) -> str:
    assert app.addresses is not None
    return app.addresses.grpc_target
