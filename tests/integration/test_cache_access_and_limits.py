"""Who may use which cache namespace, and every bound of a cache request: each refusal
names its field (and limit), and a refused request writes nothing (issue 6)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.harness.grpc_server import AppFactory, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.integration.cache_support import (
    Cache,
    cache_caller,
    cache_db,
    entry,
    expect_error,
    redis_target,
    snapshot,
)
from tokenservice.v1 import cache_service_pb2 as pb
from tokenservice.v1 import cache_service_pb2_grpc
from tokenservice_server.storage import cache_keys

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
MiB = 1024 * 1024


@pytest.fixture
async def admin(channel: grpc.aio.Channel, admin_token: str) -> Cache:
    return Cache(channel, admin_token)


# -- access control -----------------------------------------------------------------------


async def test_a_reader_reads_its_namespace_and_nothing_else(
    channel: grpc.aio.Channel, admin_token: str, admin: Cache
) -> None:
    await admin.set("recipes", "k", b"recipe")
    await admin.set("billing", "k", b"invoice")
    reader = await cache_caller(channel, admin_token, "recipes-reader", ["cache:recipes:read"])

    assert (await reader.get("recipes", "k")).value == b"recipe"
    assert [item.value for item in await reader.batch_get("recipes", ["k"])] == [b"recipe"]
    assert (await reader.stats("recipes")).entries == 1

    denied: list[Callable[[], Awaitable[Any]]] = [
        lambda: reader.get("billing", "k"),  # another service's namespace
        lambda: reader.batch_get("billing", ["k"]),
        lambda: reader.stats("billing"),
        lambda: reader.set("recipes", "k", b"overwrite"),  # reading is not writing
        lambda: reader.batch_set("recipes", [entry("k", b"x")]),
        lambda: reader.delete("recipes", "k"),
        lambda: reader.invalidate("recipes"),
        lambda: reader.get("recipes", "new", lock_if_missing=True),  # a lease is a write
    ]
    for call in denied:
        await expect_error(call(), DENIED, "PERMISSION_DENIED", field="namespace")
    assert (await admin.get("recipes", "k")).value == b"recipe"
    assert (await admin.get("billing", "k")).value == b"invoice"


async def test_a_writer_writes_its_namespace_but_cannot_read_it(
    channel: grpc.aio.Channel, admin_token: str
) -> None:
    writer = await cache_caller(channel, admin_token, "recipes-writer", ["cache:recipes:write"])
    await writer.set("recipes", "k", b"v")
    await writer.batch_set("recipes", [entry("j", b"v")])
    assert await writer.delete("recipes", "j") is True
    assert await writer.invalidate("recipes") == 1
    await expect_error(writer.get("recipes", "k"), DENIED, "PERMISSION_DENIED")
    await expect_error(writer.set("billing", "k", b"v"), DENIED, "PERMISSION_DENIED")


async def test_read_and_write_scopes_together_allow_the_fill_lease(
    channel: grpc.aio.Channel, admin_token: str
) -> None:
    service = await cache_caller(
        channel, admin_token, "recipes-svc", ["cache:recipes:read", "cache:recipes:write"]
    )
    lease = await service.get("recipes", "k", lock_if_missing=True)
    assert lease.lease_status == pb.LEASE_STATUS_GRANTED


async def test_wildcard_scopes_reach_every_namespace(
    channel: grpc.aio.Channel, admin_token: str
) -> None:
    tooling = await cache_caller(
        channel, admin_token, "cache-tooling", ["cache:*:read", "cache:*:write"]
    )
    for namespace in ("recipes", "billing", "a-b_c"):
        await tooling.set(namespace, "k", namespace.encode())
        assert (await tooling.get(namespace, "k")).value == namespace.encode()
    # A namespace literally named like the wildcard is not a namespace at all.
    await expect_error(tooling.get("*", "k"), INVALID, "INVALID_REQUEST", field="namespace")


async def test_calls_without_a_valid_bearer_token_are_refused(channel: grpc.aio.Channel) -> None:
    stub = cache_service_pb2_grpc.CacheServiceStub(channel)
    request = pb.GetValueRequest(namespace="recipes", key="k")
    await expect_error(
        stub.GetValue(request, timeout=5), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )
    await expect_error(
        stub.GetValue(request, metadata=(("authorization", "Bearer tsat_nope"),), timeout=5),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )


# -- bounds -------------------------------------------------------------------------------


def _set(namespace: str = "recipes", key: str = "k", value: bytes = b"v", **fields: Any) -> Any:
    return ("SetValue", pb.SetValueRequest(namespace=namespace, key=key, value=value, **fields))


def _batch_set(entries: list[pb.CacheEntry], **fields: Any) -> Any:
    return (
        "BatchSetValues",
        pb.BatchSetValuesRequest(namespace="recipes", entries=entries, **fields),
    )


def _get(**fields: Any) -> Any:
    return ("GetValue", pb.GetValueRequest(**{"namespace": "recipes", "key": "k", **fields}))


_TOO_LONG_KEY = "é" * 257  # 514 bytes in UTF-8, though only 257 characters
_FILL = [entry(f"ok{i}", b"v") for i in range(3)]

# (call, reason, field, limit): every bound a request can break, and what it answers.
LIMITS = {
    "namespace uppercase": (_set(namespace="Recipes"), "INVALID_REQUEST", "namespace", None),
    "namespace empty": (_set(namespace=""), "INVALID_REQUEST", "namespace", None),
    "namespace too long": (_set(namespace="n" * 65), "INVALID_REQUEST", "namespace", None),
    "namespace with colon": (_set(namespace="a:b"), "INVALID_REQUEST", "namespace", None),
    "key empty": (_set(key=""), "INVALID_REQUEST", "key", None),
    "key too large": (_set(key=_TOO_LONG_KEY), "VALUE_TOO_LARGE", "key", 512),
    "value too large": (_set(value=b"x" * (MiB + 1)), "VALUE_TOO_LARGE", "value", MiB),
    "ttl zero": (_set(ttl_seconds=0), "INVALID_REQUEST", "ttl_seconds", None),
    "ttl negative": (_set(ttl_seconds=-5), "INVALID_REQUEST", "ttl_seconds", None),
    "ttl above max": (_set(ttl_seconds=2_592_001), "INVALID_REQUEST", "ttl_seconds", 2_592_000),
    "lease token junk": (_set(lease_token="t" * 129), "INVALID_REQUEST", "lease_token", None),
    "get key too large": (_get(key=_TOO_LONG_KEY), "VALUE_TOO_LARGE", "key", 512),
    "lease ttl above max": (
        _get(lock_if_missing=True, lease_ttl_seconds=61),
        "INVALID_REQUEST",
        "lease_ttl_seconds",
        60,
    ),
    "lease ttl negative": (
        _get(lock_if_missing=True, lease_ttl_seconds=-1),
        "INVALID_REQUEST",
        "lease_ttl_seconds",
        60,
    ),
    "batch get too many": (
        ("BatchGetValues", pb.BatchGetValuesRequest(namespace="r", keys=["k"] * 101)),
        "INVALID_REQUEST",
        "keys",
        100,
    ),
    "batch get key too large": (
        ("BatchGetValues", pb.BatchGetValuesRequest(namespace="r", keys=["k", _TOO_LONG_KEY])),
        "VALUE_TOO_LARGE",
        "keys[1]",
        512,
    ),
    "batch set too many": (
        _batch_set([entry(f"k{i}", b"v") for i in range(101)]),
        "INVALID_REQUEST",
        "entries",
        100,
    ),
    "batch set ttl zero": (
        _batch_set(_FILL, ttl_seconds=0),
        "INVALID_REQUEST",
        "ttl_seconds",
        None,
    ),
    "batch entry ttl zero": (
        _batch_set([*_FILL, entry("bad", b"v", ttl=0)]),
        "INVALID_REQUEST",
        "entries[3].ttl_seconds",
        None,
    ),
    "batch entry value too large": (
        _batch_set([*_FILL, entry("big", b"x" * (MiB + 1))]),
        "VALUE_TOO_LARGE",
        "entries[3].value",
        MiB,
    ),
    "batch entry key empty": (
        _batch_set([*_FILL, entry("", b"v")]),
        "INVALID_REQUEST",
        "entries[3].key",
        None,
    ),
    "delete key empty": (
        ("DeleteValue", pb.DeleteValueRequest(namespace="recipes", key="")),
        "INVALID_REQUEST",
        "key",
        None,
    ),
    "invalidate bad namespace": (
        ("InvalidateNamespace", pb.InvalidateNamespaceRequest(namespace="Bad")),
        "INVALID_REQUEST",
        "namespace",
        None,
    ),
}


@pytest.mark.parametrize("case", LIMITS)
async def test_every_bound_answers_invalid_argument_naming_it_and_writes_nothing(
    admin: Cache, valkey: RedisProcess, case: str
) -> None:
    (method, request), reason, field, limit = LIMITS[case]
    await admin.set("recipes", "existing", b"kept")
    raw = cache_db(valkey)
    before = snapshot(raw)

    call = getattr(admin.stub, method)(request, metadata=admin.metadata, timeout=10)
    await expect_error(call, INVALID, reason, field=field, limit=limit)

    assert snapshot(raw) == before


async def test_a_batch_with_more_keys_than_the_namespace_holds_is_namespace_full(
    admin: Cache, valkey: RedisProcess
) -> None:
    raw = cache_db(valkey)
    raw.hset(cache_keys.CONFIG, "small:max_entries", 3)
    await admin.batch_set("small", [entry(f"k{i}", b"v") for i in range(3)])
    before = snapshot(raw)

    await expect_error(
        admin.batch_set("small", [entry(f"new{i}", b"v") for i in range(4)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "NAMESPACE_FULL",
        field="entries",
        limit=3,
    )
    assert snapshot(raw) == before
    # Duplicates count once: four entries, three keys, fits (evicting all three old ones).
    batch = [entry("a", b"1"), entry("b", b"2"), entry("c", b"3"), entry("a", b"4")]
    assert await admin.batch_set("small", batch) == 3


async def test_the_bounds_follow_the_configuration(
    app_factory: AppFactory, valkey: RedisProcess
) -> None:
    app = await app_factory(
        redis={"url": valkey.url},
        cache={
            "max_value_bytes": 10,
            "max_key_bytes": 4,
            "default_ttl": 30,
            "max_ttl": 60,
            "max_batch": 2,
        },
    )
    admin_credentials = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(redis_target(app)) as channel:
        cache = Cache(channel, await issue_token(channel, admin_credentials))
        await cache.set("recipes", "abcd", b"0123456789", ttl=60)
        assert (await cache.set("recipes", "dflt", b"")) == 0
        assert (await cache.get("recipes", "dflt")).remaining_ttl_seconds == 30
        await expect_error(
            cache.set("recipes", "abcde", b""), INVALID, "VALUE_TOO_LARGE", field="key", limit=4
        )
        await expect_error(
            cache.set("recipes", "k", b"x" * 11), INVALID, "VALUE_TOO_LARGE", limit=10
        )
        await expect_error(
            cache.set("recipes", "k", b"", ttl=61), INVALID, "INVALID_REQUEST", limit=60
        )
        await expect_error(
            cache.batch_get("recipes", ["a", "b", "c"]), INVALID, "INVALID_REQUEST", limit=2
        )
