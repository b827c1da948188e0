"""The shared cache (SPEC section 3, CacheService): TTL'd byte values per namespace.

Every call checks the caller's namespace scope and the request's bounds first (see
``cache_policy``), so a refused request writes nothing, then makes exactly one atomic
store call. The store keeps each namespace within its entry cap by evicting the least
recently used entries in the same step as the write, invalidates a namespace in O(1)
by moving it to a new generation, and counts hits, misses and evictions.

Stampede protection: a ``get`` with ``lock_if_missing`` that misses tries to take a
short fill lease on the key. The one caller that gets it computes the value and
publishes it with ``set(..., lease_token=...)``, which also releases the lease; the
others are told the lease is held elsewhere and retry shortly instead of computing the
same value at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from enum import Enum
from typing import Protocol

from tokenservice_server.domain.cache_policy import (
    Access,
    CacheLimits,
    authorize,
    lease_ttl,
    validate_batch_size,
    validate_key,
    validate_namespace,
    validate_ttl,
    validate_value,
)
from tokenservice_server.domain.errors import InvalidRequest, NamespaceFull
from tokenservice_server.domain.tokens import Caller
from tokenservice_server.domain.value_object import value_object

__all__ = [
    "CacheService",
    "CacheStore",
    "Entry",
    "EntryWrite",
    "Lease",
    "LeaseStatus",
    "Lookup",
    "NamespaceStats",
    "Read",
    "StoredWrite",
]

MAX_LEASE_TOKEN = 128


class LeaseStatus(Enum):
    NONE = 0  # no lease asked for, or the value was found
    GRANTED = 1  # the caller holds the fill lease
    HELD_ELSEWHERE = 2  # another caller holds it


@value_object
class Lookup:
    key: str
    found: bool
    value: bytes = b""
    remaining_ttl: int = 0  # seconds, rounded up; 0 when not found


@value_object
class EntryWrite:
    """A value to write as the caller gave it (``ttl`` None: the request's default)."""

    key: str
    value: bytes
    ttl: int | None = None


@value_object
class Entry:
    """A validated value to write, with its lifetime in seconds."""

    key: str
    value: bytes
    ttl: int


@value_object
class Lease:
    token: str
    ttl: int  # seconds


@value_object
class Read:
    lookup: Lookup
    lease_status: LeaseStatus = LeaseStatus.NONE
    lease_token: str = ""


@value_object
class StoredWrite:
    accepted: bool  # False: more distinct keys than the namespace may hold; nothing written
    evicted: int
    max_entries: int  # the cap in force for the namespace


@value_object
class NamespaceStats:
    hits: int
    misses: int
    entries: int
    evictions: int
    bytes: int
    max_entries: int
    invalidations: int

    @property
    def hit_ratio(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0


class CacheStore(Protocol):
    """Each method is one Redis round trip, atomic."""

    async def read(
        self, namespace: str, keys: Sequence[str], *, adopt_ttl: int, lease: Lease | None
    ) -> tuple[list[Lookup], LeaseStatus]:
        """Look up ``keys`` in order, marking hits as recently used; with ``lease`` (one
        key only), a miss tries to take the key's fill lease. A live value written
        without an expiry is given ``adopt_ttl`` seconds."""

    async def write(
        self, namespace: str, entries: Sequence[Entry], *, max_entries: int, lease_token: str
    ) -> StoredWrite:
        """Write distinct-key ``entries`` all or none, evicting least recently used
        entries to stay within the cap (``max_entries`` unless the namespace has its
        own); a matching ``lease_token`` releases the key's fill lease."""

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove a value; True when a live one was removed."""

    async def invalidate(self, namespace: str) -> int:
        """Make every value unreachable in O(1); the number of live entries dropped."""

    async def stats(self, namespace: str, *, max_entries: int) -> NamespaceStats: ...


def _last_write_wins(entries: Sequence[Entry]) -> list[Entry]:
    """One entry per key, the last given, in the order of those last occurrences."""
    latest: dict[str, Entry] = {}
    for entry in entries:
        latest.pop(entry.key, None)
        latest[entry.key] = entry
    return list(latest.values())


class CacheService:
    def __init__(self, store: CacheStore, limits: CacheLimits) -> None:
        self._store = store
        self.limits = limits

    def _namespace(self, caller: Caller, namespace: str, *needed: Access) -> str:
        validate_namespace(namespace)
        authorize(caller, namespace, *needed)
        return namespace

    async def get(
        self,
        caller: Caller,
        namespace: str,
        key: str,
        *,
        lock_if_missing: bool = False,
        lease_ttl_seconds: int = 0,
    ) -> Read:
        needed = (Access.READ, Access.WRITE) if lock_if_missing else (Access.READ,)
        self._namespace(caller, namespace, *needed)
        validate_key(key, self.limits)
        lease = None
        if lock_if_missing:
            lease = Lease(secrets.token_urlsafe(24), lease_ttl(lease_ttl_seconds, self.limits))
        (lookup,), status = await self._store.read(
            namespace, [key], adopt_ttl=self.limits.default_ttl, lease=lease
        )
        token = lease.token if lease is not None and status is LeaseStatus.GRANTED else ""
        return Read(lookup, status, token)

    async def get_many(self, caller: Caller, namespace: str, keys: Sequence[str]) -> list[Lookup]:
        self._namespace(caller, namespace, Access.READ)
        validate_batch_size(keys, self.limits, field="keys")
        for index, key in enumerate(keys):
            validate_key(key, self.limits, field=f"keys[{index}]")
        if not keys:
            return []
        lookups, _ = await self._store.read(
            namespace, keys, adopt_ttl=self.limits.default_ttl, lease=None
        )
        return lookups

    async def set(
        self,
        caller: Caller,
        namespace: str,
        key: str,
        value: bytes,
        *,
        ttl: int | None = None,
        lease_token: str = "",
    ) -> int:
        """Write one value; returns how many entries were evicted to make room."""
        self._namespace(caller, namespace, Access.WRITE)
        validate_key(key, self.limits)
        validate_value(value, self.limits)
        default = self.limits.default_ttl
        seconds = validate_ttl(ttl, self.limits, field="ttl_seconds", default=default)
        if len(lease_token) > MAX_LEASE_TOKEN:
            raise InvalidRequest("lease_token", "not a token returned by GetValue")
        return await self._write(namespace, [Entry(key, value, seconds)], lease_token)

    async def set_many(
        self,
        caller: Caller,
        namespace: str,
        entries: Sequence[EntryWrite],
        *,
        ttl: int | None = None,
    ) -> int:
        """Write several values all or none; a later entry for a key wins."""
        self._namespace(caller, namespace, Access.WRITE)
        validate_batch_size(entries, self.limits, field="entries")
        default = validate_ttl(
            ttl, self.limits, field="ttl_seconds", default=self.limits.default_ttl
        )
        checked = []
        for index, entry in enumerate(entries):
            field = f"entries[{index}]"
            validate_key(entry.key, self.limits, field=f"{field}.key")
            validate_value(entry.value, self.limits, field=f"{field}.value")
            seconds = validate_ttl(
                entry.ttl, self.limits, field=f"{field}.ttl_seconds", default=default
            )
            checked.append(Entry(entry.key, entry.value, seconds))
        if not checked:
            return 0
        return await self._write(namespace, _last_write_wins(checked), "")

    async def _write(self, namespace: str, entries: list[Entry], lease_token: str) -> int:
        stored = await self._store.write(
            namespace, entries, max_entries=self.limits.max_entries, lease_token=lease_token
        )
        if not stored.accepted:
            raise NamespaceFull(
                f"namespace {namespace!r} holds at most {stored.max_entries} entries; "
                f"this write has {len(entries)} distinct keys",
                field="entries",
                limit=stored.max_entries,
            )
        return stored.evicted

    async def delete(self, caller: Caller, namespace: str, key: str) -> bool:
        self._namespace(caller, namespace, Access.WRITE)
        validate_key(key, self.limits)
        return await self._store.delete(namespace, key)

    async def invalidate(self, caller: Caller, namespace: str) -> int:
        self._namespace(caller, namespace, Access.WRITE)
        return await self._store.invalidate(namespace)

    async def stats(self, caller: Caller, namespace: str) -> NamespaceStats:
        self._namespace(caller, namespace, Access.READ)
        return await self._store.stats(namespace, max_entries=self.limits.max_entries)
