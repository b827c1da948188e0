"""Cache request bounds and namespace access, as pure functions (no server, no Redis),
and the domain service's promise that a refused request never reaches the store."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tokenservice_server.domain.cache import (
    CacheService,
    Entry,
    EntryWrite,
    Lease,
    LeaseStatus,
    Lookup,
    NamespaceStats,
    StoredWrite,
)
from tokenservice_server.domain.cache_policy import (
    Access,
    CacheLimits,
    authorize,
    lease_ttl,
    validate_key,
    validate_namespace,
    validate_ttl,
)
from tokenservice_server.domain.errors import (
    DomainError,
    InvalidRequest,
    NamespaceFull,
    PermissionDenied,
    ValueTooLarge,
)
from tokenservice_server.domain.tokens import Caller

LIMITS = CacheLimits()


def caller(*scopes: str) -> Caller:
    return Caller(client_id="svc", scopes=frozenset(scopes))


@pytest.mark.parametrize("namespace", ["recipes", "a", "n" * 64, "a-b_c-9"])
def test_valid_namespaces(namespace: str) -> None:
    assert validate_namespace(namespace) == namespace


@pytest.mark.parametrize("namespace", ["", "n" * 65, "Recipes", "a:b", "a b", "*", "é", "a\n"])
def test_invalid_namespaces_name_the_field(namespace: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_namespace(namespace)
    assert caught.value.metadata == {"field": "namespace"}


def test_scopes_are_per_namespace_and_per_access() -> None:
    authorize(caller("cache:recipes:read"), "recipes", Access.READ)
    authorize(caller("cache:*:write", "cache:recipes:read"), "recipes", Access.READ, Access.WRITE)
    authorize(caller("cache:*:read"), "anything", Access.READ)
    for scopes, namespace, needed in [
        (("cache:recipes:read",), "billing", (Access.READ,)),
        (("cache:recipes:read",), "recipes", (Access.WRITE,)),
        (("cache:recipes:write",), "recipes", (Access.READ,)),
        (("cache:recipes:read",), "recipes", (Access.READ, Access.WRITE)),
        (("cache:*:read",), "recipes", (Access.WRITE,)),
        (
            ("cache:recipe:read", "cache:recipes-x:read", "tokenservice.admin"),
            "recipes",
            (Access.READ,),
        ),
    ]:
        with pytest.raises(PermissionDenied, match=f"cache:{namespace}:"):
            authorize(caller(*scopes), namespace, *needed)


def test_keys_are_bounded_in_utf8_bytes() -> None:
    assert validate_key("k" * 512, LIMITS) == "k" * 512
    with pytest.raises(ValueTooLarge) as caught:
        validate_key("é" * 257, LIMITS, field="keys[3]")  # 257 characters, 514 bytes
    assert caught.value.reason == "VALUE_TOO_LARGE"
    assert caught.value.metadata == {"field": "keys[3]", "limit": "512"}
    with pytest.raises(InvalidRequest):
        validate_key("", LIMITS)


def test_ttls() -> None:
    assert validate_ttl(None, LIMITS, field="ttl_seconds", default=77) == 77
    assert validate_ttl(LIMITS.max_ttl, LIMITS, field="ttl_seconds", default=1) == LIMITS.max_ttl
    for bad in (0, -1):
        with pytest.raises(InvalidRequest, match="positive"):
            validate_ttl(bad, LIMITS, field="ttl_seconds", default=1)
    with pytest.raises(InvalidRequest) as caught:
        validate_ttl(LIMITS.max_ttl + 1, LIMITS, field="entries[0].ttl_seconds", default=1)
    assert caught.value.metadata == {"field": "entries[0].ttl_seconds", "limit": "2592000"}
    assert lease_ttl(0, LIMITS) == 10
    assert lease_ttl(60, LIMITS) == 60
    for bad in (-1, 61):
        with pytest.raises(InvalidRequest):
            lease_ttl(bad, LIMITS)


class RecordingStore:
    """Remembers what reached storage; answers like an empty cache."""

    def __init__(self, cap: int = 10_000) -> None:
        self.calls: list[tuple[str, object]] = []
        self.cap = cap

    async def read(
        self, namespace: str, keys: Sequence[str], *, adopt_ttl: int, lease: Lease | None
    ) -> tuple[list[Lookup], LeaseStatus]:
        self.calls.append(("read", list(keys)))
        return [
            Lookup(key, False) for key in keys
        ], LeaseStatus.GRANTED if lease else LeaseStatus.NONE

    async def write(
        self, namespace: str, entries: Sequence[Entry], *, max_entries: int, lease_token: str
    ) -> StoredWrite:
        self.calls.append(("write", list(entries)))
        return StoredWrite(len(entries) <= self.cap, 0, self.cap)

    async def delete(self, namespace: str, key: str) -> bool:
        self.calls.append(("delete", key))
        return False

    async def invalidate(self, namespace: str) -> int:
        self.calls.append(("invalidate", namespace))
        return 0

    async def stats(self, namespace: str, *, max_entries: int) -> NamespaceStats:
        self.calls.append(("stats", namespace))
        return NamespaceStats(0, 0, 0, 0, 0, max_entries, 0)


ADMIN = caller("cache:*:read", "cache:*:write")


async def test_refused_requests_never_reach_the_store() -> None:
    store = RecordingStore()
    cache = CacheService(store, LIMITS)
    reader = caller("cache:recipes:read")
    refused = [
        cache.set(reader, "recipes", "k", b"v"),
        cache.get(reader, "recipes", "k", lock_if_missing=True),
        cache.get(ADMIN, "Bad", "k"),
        cache.set(ADMIN, "recipes", "k", b"x" * (LIMITS.max_value_bytes + 1)),
        cache.set(ADMIN, "recipes", "k", b"v", ttl=0),
        cache.set_many(ADMIN, "recipes", [EntryWrite("a", b"v"), EntryWrite("b", b"v", ttl=-1)]),
        cache.get_many(ADMIN, "recipes", ["k"] * (LIMITS.max_batch + 1)),
        cache.delete(reader, "recipes", "k"),
        cache.invalidate(reader, "recipes"),
        cache.stats(caller("cache:billing:read"), "recipes"),
    ]
    for call in refused:
        with pytest.raises(DomainError):
            await call
    assert store.calls == []


async def test_a_batch_keeps_the_last_entry_per_key_in_the_order_last_written() -> None:
    store = RecordingStore()
    cache = CacheService(store, LIMITS)
    batch = [EntryWrite("a", b"1"), EntryWrite("b", b"2", ttl=5), EntryWrite("a", b"3")]
    await cache.set_many(ADMIN, "recipes", batch, ttl=60)
    assert store.calls == [("write", [Entry("b", b"2", 5), Entry("a", b"3", 60)])]


async def test_a_write_the_namespace_cannot_hold_is_namespace_full() -> None:
    cache = CacheService(RecordingStore(cap=2), LIMITS)
    with pytest.raises(NamespaceFull) as caught:
        await cache.set_many(ADMIN, "recipes", [EntryWrite(k, b"v") for k in "abc"])
    assert caught.value.metadata == {"field": "entries", "limit": "2"}


async def test_only_a_granted_lease_hands_out_its_token() -> None:
    cache = CacheService(RecordingStore(), LIMITS)
    read = await cache.get(ADMIN, "recipes", "k", lock_if_missing=True)
    assert read.lease_status is LeaseStatus.GRANTED
    assert len(read.lease_token) >= 32
    plain = await cache.get(ADMIN, "recipes", "k")
    assert (plain.lease_status, plain.lease_token) == (LeaseStatus.NONE, "")


def test_hit_ratio() -> None:
    assert NamespaceStats(3, 1, 0, 0, 0, 1, 0).hit_ratio == 0.75
    assert NamespaceStats(0, 0, 0, 0, 0, 1, 0).hit_ratio == 0.0
