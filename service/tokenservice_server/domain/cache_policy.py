"""What the shared cache accepts and who may touch which namespace (SPEC section 3).

Namespaces are ``[a-z0-9_-]{1,64}`` and belong to one calling service: reading needs
scope ``cache:{namespace}:read``, writing ``cache:{namespace}:write``; ``cache:*:read``
and ``cache:*:write`` are for admin tooling. Keys, values, TTLs and batches are bounded
by :class:`CacheLimits`; a request that breaks a bound fails before anything is written,
with the field and the limit named in the error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tokenservice_server.domain.errors import InvalidRequest, PermissionDenied, ValueTooLarge
from tokenservice_server.domain.tokens import Caller

__all__ = [
    "NAMESPACE_PATTERN",
    "Access",
    "CacheLimits",
    "authorize",
    "lease_ttl",
    "validate_batch_size",
    "validate_key",
    "validate_namespace",
    "validate_ttl",
    "validate_value",
]

NAMESPACE_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class CacheLimits:
    """Bounds of every cache request; TTLs in seconds, sizes in bytes."""

    default_ttl: int = 86_400
    max_ttl: int = 2_592_000
    max_value_bytes: int = 1_048_576
    max_key_bytes: int = 512
    max_entries: int = 10_000  # per namespace, unless cache_config says otherwise
    max_batch: int = 100
    lease_ttl: int = 10
    max_lease_ttl: int = 60


def validate_namespace(namespace: str) -> str:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise InvalidRequest("namespace", "1-64 characters of a-z, 0-9, '_' and '-'")
    return namespace


def authorize(caller: Caller, namespace: str, *needed: Access) -> None:
    """Raise PermissionDenied unless ``caller`` holds every ``needed`` access to ``namespace``."""
    missing = _missing_scope(caller.scopes, namespace, needed)
    if missing:
        raise PermissionDenied(f"this call needs scope {missing}", field="namespace")


@functools.lru_cache(maxsize=4096)
def _missing_scope(granted: frozenset[str], namespace: str, needed: tuple[Access, ...]) -> str:
    """The first scope of ``needed`` that ``granted`` lacks ('' if none): an access is
    granted by the namespace's own scope or the any-namespace one. Answered once per
    set of scopes, namespace and access (every cache RPC asks; a token's scopes repeat)."""
    for access in needed:
        scope = f"cache:{namespace}:{access}"
        if scope not in granted and f"cache:*:{access}" not in granted:
            return scope
    return ""


def validate_key(key: str, limits: CacheLimits, *, field: str = "key") -> str:
    if not key:
        raise InvalidRequest(field, "required")
    if len(key.encode("utf-8")) > limits.max_key_bytes:
        raise ValueTooLarge(field, limits.max_key_bytes)
    return key


def validate_value(value: bytes, limits: CacheLimits, *, field: str = "value") -> bytes:
    if len(value) > limits.max_value_bytes:
        raise ValueTooLarge(field, limits.max_value_bytes)
    return value


def validate_ttl(ttl: int | None, limits: CacheLimits, *, field: str, default: int) -> int:
    """Seconds an entry lives: ``default`` when unset; 0 and negative are refused."""
    if ttl is None:
        return default
    if ttl <= 0:
        raise InvalidRequest(field, "must be positive (leave it unset for the default)")
    if ttl > limits.max_ttl:
        raise InvalidRequest(field, f"at most {limits.max_ttl} seconds", limit=limits.max_ttl)
    return ttl


def lease_ttl(requested: int, limits: CacheLimits) -> int:
    """Seconds a fill lease lasts: 0 means the server default."""
    if requested == 0:
        return limits.lease_ttl
    if not 0 < requested <= limits.max_lease_ttl:
        raise InvalidRequest(
            "lease_ttl_seconds",
            f"1-{limits.max_lease_ttl} seconds, or 0 for the default",
            limit=limits.max_lease_ttl,
        )
    return requested


def validate_batch_size(items: Sequence[object], limits: CacheLimits, *, field: str) -> None:
    if len(items) > limits.max_batch:
        raise InvalidRequest(
            field, f"at most {limits.max_batch} per request", limit=limits.max_batch
        )
