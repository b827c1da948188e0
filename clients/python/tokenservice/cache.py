"""Typed access to one CacheService namespace: bytes in, bytes out, plus JSON helpers.

Wraps the ``cache`` stub of a convenience client, so every call gets that client's
deadline, retries and bearer token::

    async with AsyncTokenServiceClient("127.0.0.1:50051", token_source=source) as client:
        recipes = AsyncCacheClient(client, "recipes")
        await recipes.set("popular", b"...", ttl_seconds=300)
        value = await recipes.get("popular")  # bytes, or None on a miss
        await recipes.set_json("top10", [1, 2, 3])
        top = await recipes.get_json("top10", default=[])
        # Compute a missing value once, however many callers miss it at the same time:
        page = await recipes.get_or_set("page:1", render_page, ttl_seconds=60)

The caller's token needs ``cache:{namespace}:read`` to read and ``cache:{namespace}:write``
to write (``get_or_set`` needs both). Failures raise the gRPC error of the call; see
:func:`tokenservice.client.error_reason`.
"""

# `timeout` parameters are gRPC deadlines passed to the call, as in the gRPC stubs.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from tokenservice.client import AsyncTokenServiceClient, SyncTokenServiceClient
from tokenservice.v1 import cache_service_pb2 as pb

__all__ = ["AsyncCacheClient", "SyncCacheClient"]

#: Seconds between GetValue retries while another caller holds the fill lease.
DEFAULT_POLL_INTERVAL = 0.05
#: Seconds ``get_or_set`` waits for another caller's fill before computing the value itself.
DEFAULT_MAX_WAIT = 10.0


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _set_request(
    namespace: str, key: str, value: bytes, ttl_seconds: int | None, lease_token: str = ""
) -> pb.SetValueRequest:
    request = pb.SetValueRequest(namespace=namespace, key=key, value=value, lease_token=lease_token)
    if ttl_seconds is not None:
        request.ttl_seconds = ttl_seconds
    return request


def _batch_set_request(
    namespace: str, values: Mapping[str, bytes], ttl_seconds: int | None
) -> pb.BatchSetValuesRequest:
    request = pb.BatchSetValuesRequest(
        namespace=namespace,
        entries=[pb.CacheEntry(key=key, value=value) for key, value in values.items()],
    )
    if ttl_seconds is not None:
        request.ttl_seconds = ttl_seconds
    return request


def _found(response: pb.BatchGetValuesResponse) -> dict[str, bytes]:
    return {lookup.key: lookup.value for lookup in response.lookups if lookup.found}


class AsyncCacheClient:
    """One namespace of the shared cache, through an :class:`AsyncTokenServiceClient`."""

    def __init__(self, client: AsyncTokenServiceClient, namespace: str) -> None:
        self._stub = client.cache
        self.namespace = namespace

    async def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The value, or None when the key holds no live value."""
        response = await self._stub.GetValue(
            pb.GetValueRequest(namespace=self.namespace, key=key), timeout=timeout
        )
        return response.value if response.found else None

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store ``value`` (``ttl_seconds`` None: the server default); returns the number
        of least recently used entries evicted to make room."""
        response = await self._stub.SetValue(
            _set_request(self.namespace, key, value, ttl_seconds), timeout=timeout
        )
        return response.evicted_count

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Remove the key; True when it held a live value."""
        response = await self._stub.DeleteValue(
            pb.DeleteValueRequest(namespace=self.namespace, key=key), timeout=timeout
        )
        return response.deleted

    async def get_many(
        self, keys: Iterable[str], *, timeout: float | None = None
    ) -> dict[str, bytes]:
        """The live values among ``keys`` (one round trip); missing keys are left out."""
        response = await self._stub.BatchGetValues(
            pb.BatchGetValuesRequest(namespace=self.namespace, keys=list(keys)), timeout=timeout
        )
        return _found(response)

    async def set_many(
        self,
        values: Mapping[str, bytes],
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store several values, all or none; returns the number of entries evicted."""
        response = await self._stub.BatchSetValues(
            _batch_set_request(self.namespace, values, ttl_seconds), timeout=timeout
        )
        return response.evicted_count

    async def invalidate(self, *, timeout: float | None = None) -> int:
        """Drop every value of the namespace; returns how many live entries there were."""
        response = await self._stub.InvalidateNamespace(
            pb.InvalidateNamespaceRequest(namespace=self.namespace), timeout=timeout
        )
        return response.invalidated_count

    async def stats(self, *, timeout: float | None = None) -> pb.GetNamespaceStatsResponse:
        return await self._stub.GetNamespaceStats(
            pb.GetNamespaceStatsRequest(namespace=self.namespace), timeout=timeout
        )

    async def get_json(self, key: str, default: Any = None, *, timeout: float | None = None) -> Any:
        """The value decoded as JSON, or ``default`` on a miss."""
        raw = await self.get(key, timeout=timeout)
        return default if raw is None else json.loads(raw)

    async def set_json(
        self,
        key: str,
        value: Any,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store ``value`` encoded as compact UTF-8 JSON."""
        return await self.set(key, _dumps(value), ttl_seconds=ttl_seconds, timeout=timeout)

    async def get_or_set(
        self,
        key: str,
        compute: Callable[[], Awaitable[bytes]],
        *,
        ttl_seconds: int | None = None,
        lease_ttl_seconds: int = 0,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_wait: float = DEFAULT_MAX_WAIT,
        timeout: float | None = None,
    ) -> bytes:
        """The cached value, or ``compute()``'s result stored under ``key``.

        Stampede protection: of all callers missing the key at once, only the one granted
        the fill lease computes; the others poll every ``poll_interval`` seconds until the
        value appears, and compute it themselves only after ``max_wait`` seconds (e.g. when
        the lease holder crashed). ``lease_ttl_seconds`` 0 is the server default (10).
        """
        give_up = time.monotonic() + max_wait
        while True:
            response = await self._stub.GetValue(
                pb.GetValueRequest(
                    namespace=self.namespace,
                    key=key,
                    lock_if_missing=True,
                    lease_ttl_seconds=lease_ttl_seconds,
                ),
                timeout=timeout,
            )
            if response.found:
                return response.value
            waiting = response.lease_status == pb.LEASE_STATUS_HELD_ELSEWHERE
            if waiting and time.monotonic() + poll_interval < give_up:
                await asyncio.sleep(poll_interval)
                continue
            value = await compute()
            await self._stub.SetValue(
                _set_request(self.namespace, key, value, ttl_seconds, response.lease_token),
                timeout=timeout,
            )
            return value


class SyncCacheClient:
    """The blocking twin of :class:`AsyncCacheClient`, through a :class:`SyncTokenServiceClient`."""

    def __init__(self, client: SyncTokenServiceClient, namespace: str) -> None:
        self._stub = client.cache
        self.namespace = namespace

    def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The value, or None when the key holds no live value."""
        response = self._stub.GetValue(
            pb.GetValueRequest(namespace=self.namespace, key=key), timeout=timeout
        )
        return response.value if response.found else None

    def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store ``value``; returns the number of entries evicted to make room."""
        response = self._stub.SetValue(
            _set_request(self.namespace, key, value, ttl_seconds), timeout=timeout
        )
        return response.evicted_count

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        response = self._stub.DeleteValue(
            pb.DeleteValueRequest(namespace=self.namespace, key=key), timeout=timeout
        )
        return response.deleted

    def get_many(self, keys: Iterable[str], *, timeout: float | None = None) -> dict[str, bytes]:
        response = self._stub.BatchGetValues(
            pb.BatchGetValuesRequest(namespace=self.namespace, keys=list(keys)), timeout=timeout
        )
        return _found(response)

    def set_many(
        self,
        values: Mapping[str, bytes],
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        response = self._stub.BatchSetValues(
            _batch_set_request(self.namespace, values, ttl_seconds), timeout=timeout
        )
        return response.evicted_count

    def invalidate(self, *, timeout: float | None = None) -> int:
        response = self._stub.InvalidateNamespace(
            pb.InvalidateNamespaceRequest(namespace=self.namespace), timeout=timeout
        )
        return response.invalidated_count

    def stats(self, *, timeout: float | None = None) -> pb.GetNamespaceStatsResponse:
        return self._stub.GetNamespaceStats(
            pb.GetNamespaceStatsRequest(namespace=self.namespace), timeout=timeout
        )

    def get_json(self, key: str, default: Any = None, *, timeout: float | None = None) -> Any:
        raw = self.get(key, timeout=timeout)
        return default if raw is None else json.loads(raw)

    def set_json(
        self,
        key: str,
        value: Any,
        *,
        ttl_seconds: int | None = None,
        timeout: float | None = None,
    ) -> int:
        return self.set(key, _dumps(value), ttl_seconds=ttl_seconds, timeout=timeout)

    def get_or_set(
        self,
        key: str,
        compute: Callable[[], bytes],
        *,
        ttl_seconds: int | None = None,
        lease_ttl_seconds: int = 0,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_wait: float = DEFAULT_MAX_WAIT,
        timeout: float | None = None,
    ) -> bytes:
        """See :meth:`AsyncCacheClient.get_or_set`."""
        give_up = time.monotonic() + max_wait
        while True:
            response = self._stub.GetValue(
                pb.GetValueRequest(
                    namespace=self.namespace,
                    key=key,
                    lock_if_missing=True,
                    lease_ttl_seconds=lease_ttl_seconds,
                ),
                timeout=timeout,
            )
            if response.found:
                return response.value
            waiting = response.lease_status == pb.LEASE_STATUS_HELD_ELSEWHERE
            if waiting and time.monotonic() + poll_interval < give_up:
                time.sleep(poll_interval)
                continue
            value = compute()
            self._stub.SetValue(
                _set_request(self.namespace, key, value, ttl_seconds, response.lease_token),
                timeout=timeout,
            )
            return value
