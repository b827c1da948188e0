"""The typed cache client of tokenservice-client (bytes in, bytes out, JSON helpers,
stampede-protected get_or_set) against a real server (issue 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness.grpc_server import Credentials
from tests.integration.cache_support import expect_error, redis_target
from tokenservice.cache import AsyncCacheClient, SyncCacheClient
from tokenservice.client import AsyncTokenServiceClient, SyncTokenServiceClient
from tokenservice.token_source import (
    ClientCredentialsTokenSource,
    SyncClientCredentialsTokenSource,
)
from tokenservice_server.app import Application


@pytest.fixture
async def client(
    server: Application, admin_credentials: Credentials
) -> AsyncIterator[AsyncTokenServiceClient]:
    async with AsyncTokenServiceClient(redis_target(server)) as client:
        client.token_source = ClientCredentialsTokenSource(
            client, admin_credentials.client_id, admin_credentials.client_secret
        )
        yield client


async def test_bytes_in_bytes_out(client: AsyncTokenServiceClient) -> None:
    recipes = AsyncCacheClient(client, "recipes")
    assert await recipes.get("missing") is None
    assert await recipes.set("k", b"\x00\xff", ttl_seconds=60) == 0
    assert await recipes.get("k") == b"\x00\xff"
    assert await recipes.set_many({"a": b"1", "b": b"2"}) == 0
    assert await recipes.get_many(["a", "missing", "b"]) == {"a": b"1", "b": b"2"}
    assert await recipes.delete("a") is True
    assert await recipes.delete("a") is False
    stats = await recipes.stats()
    assert (stats.entries, stats.hits, stats.misses) == (2, 3, 2)
    assert await recipes.invalidate() == 2
    assert await recipes.get("k") is None


async def test_json_values_round_trip(client: AsyncTokenServiceClient) -> None:
    recipes = AsyncCacheClient(client, "recipes")
    document = {"title": "Crêpes", "servings": 4, "tags": ["sweet", None], "ok": True}
    await recipes.set_json("crepes", document)
    assert await recipes.get_json("crepes") == document
    assert await recipes.get("crepes") == (
        b'{"title":"Cr\xc3\xaapes","servings":4,"tags":["sweet",null],"ok":true}'
    )
    assert await recipes.get_json("missing", default=[]) == []


async def test_get_or_set_computes_a_missing_value_once_for_all_callers(
    client: AsyncTokenServiceClient,
) -> None:
    recipes = AsyncCacheClient(client, "recipes")
    computed = 0

    async def render() -> bytes:
        nonlocal computed
        computed += 1
        await asyncio.sleep(0.3)  # long enough for every caller to miss first
        return b"expensive page"

    pages = await asyncio.gather(
        *(recipes.get_or_set("page:1", render, ttl_seconds=60) for _ in range(10))
    )
    assert pages == [b"expensive page"] * 10
    assert computed == 1
    assert await recipes.get_or_set("page:1", render) == b"expensive page"
    assert computed == 1


async def test_errors_surface_as_the_grpc_error(client: AsyncTokenServiceClient) -> None:
    await expect_error(
        AsyncCacheClient(client, "Not Valid").get("k"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        field="namespace",
    )


async def test_the_blocking_client_does_the_same(
    server: Application, admin_credentials: Credentials
) -> None:
    outcome: dict[str, object] = {}

    def use_it() -> None:  # in a thread: the server runs on this test's event loop
        with SyncTokenServiceClient(redis_target(server)) as client:
            client.token_source = SyncClientCredentialsTokenSource(
                client, admin_credentials.client_id, admin_credentials.client_secret
            )
            recipes = SyncCacheClient(client, "recipes")
            recipes.set("k", b"v", ttl_seconds=60)
            recipes.set_json("j", [1, 2])
            recipes.set_many({"a": b"1"})
            calls: list[str] = []

            def make(value: bytes) -> bytes:
                calls.append("computed")
                return value

            outcome["get"] = recipes.get("k")
            outcome["json"] = recipes.get_json("j")
            outcome["many"] = recipes.get_many(["a", "nope"])
            outcome["computed"] = recipes.get_or_set("c", lambda: make(b"made"))
            outcome["cached"] = recipes.get_or_set("c", lambda: make(b"again"))
            outcome["calls"] = len(calls)
            outcome["deleted"] = recipes.delete("k")
            outcome["entries"] = recipes.stats().entries
            outcome["invalidated"] = recipes.invalidate()

    thread = threading.Thread(target=use_it)
    thread.start()
    await asyncio.to_thread(thread.join, 30)
    assert outcome == {
        "get": b"v",
        "json": [1, 2],
        "many": {"a": b"1"},
        "computed": b"made",
        "cached": b"made",
        "calls": 1,
        "deleted": True,
        "entries": 3,
        "invalidated": 3,
    }
