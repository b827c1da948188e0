"""CacheService servicer: protobuf <-> domain, plus the cache's Prometheus counters.

Every RPC needs an authenticated caller (caller-authorization interceptor); the domain
checks the namespace scope. Results are counted here, so the domain stays free of
metrics: ``tokenservice_cache_requests_total{namespace,result}`` once per key read
(hit/miss) or written (set), per delete and per invalidation, and
``tokenservice_cache_evictions_total{namespace}``. Refused calls are not counted there
(``grpc_server_handled_total`` has them): a namespace label only ever comes from a
caller allowed to use that namespace, which keeps its cardinality bounded.
"""

from __future__ import annotations

from typing import Any

import grpc

from tokenservice.v1 import cache_service_pb2 as pb
from tokenservice_server.domain.cache import CacheService, EntryWrite, LeaseStatus, Lookup
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.transport.caller_auth import current_caller

__all__ = ["CacheServiceServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_LEASE_STATUS = {
    LeaseStatus.NONE: pb.LEASE_STATUS_UNSPECIFIED,
    LeaseStatus.GRANTED: pb.LEASE_STATUS_GRANTED,
    LeaseStatus.HELD_ELSEWHERE: pb.LEASE_STATUS_HELD_ELSEWHERE,
}


def _lookup_to_proto(lookup: Lookup) -> pb.CacheLookup:
    return pb.CacheLookup(
        key=lookup.key,
        found=lookup.found,
        value=lookup.value,
        remaining_ttl_seconds=lookup.remaining_ttl,
    )


def _optional_ttl(message: Any) -> int | None:
    return int(message.ttl_seconds) if message.HasField("ttl_seconds") else None


class CacheServiceServicer:
    def __init__(self, cache: CacheService, metrics: ServerMetrics) -> None:
        self._cache = cache
        self._metrics = metrics
        self._requests = metrics.cache_requests.labels  # by namespace, result

    def _count(self, namespace: str, result: str, amount: int = 1) -> None:
        if amount:
            self._requests(namespace, result).inc(amount)

    def _count_reads(self, namespace: str, lookups: list[Lookup]) -> None:
        hits = sum(lookup.found for lookup in lookups)
        self._count(namespace, "hit", hits)
        self._count(namespace, "miss", len(lookups) - hits)

    def _count_write(self, namespace: str, keys: int, evicted: int) -> None:
        self._count(namespace, "set", keys)
        if evicted:
            self._metrics.cache_evictions.labels(namespace=namespace).inc(evicted)

    async def GetValue(self, request: pb.GetValueRequest, context: Context) -> pb.GetValueResponse:
        namespace = request.namespace
        read = await self._cache.get(
            current_caller(),
            namespace,
            request.key,
            lock_if_missing=request.lock_if_missing,
            lease_ttl_seconds=request.lease_ttl_seconds,
        )
        lookup = read.lookup
        self._requests(namespace, "hit" if lookup.found else "miss").inc()
        if read.lease_status is LeaseStatus.NONE:  # the usual read: no lease fields
            return pb.GetValueResponse(
                found=lookup.found, value=lookup.value, remaining_ttl_seconds=lookup.remaining_ttl
            )
        return pb.GetValueResponse(
            found=lookup.found,
            value=lookup.value,
            remaining_ttl_seconds=lookup.remaining_ttl,
            lease_status=_LEASE_STATUS[read.lease_status],
            lease_token=read.lease_token,
        )

    async def SetValue(self, request: pb.SetValueRequest, context: Context) -> pb.SetValueResponse:
        evicted = await self._cache.set(
            current_caller(),
            request.namespace,
            request.key,
            request.value,
            ttl=_optional_ttl(request),
            lease_token=request.lease_token,
        )
        self._count_write(request.namespace, 1, evicted)
        return pb.SetValueResponse(evicted_count=evicted)

    async def DeleteValue(
        self, request: pb.DeleteValueRequest, context: Context
    ) -> pb.DeleteValueResponse:
        deleted = await self._cache.delete(current_caller(), request.namespace, request.key)
        self._count(request.namespace, "delete")
        return pb.DeleteValueResponse(deleted=deleted)

    async def BatchGetValues(
        self, request: pb.BatchGetValuesRequest, context: Context
    ) -> pb.BatchGetValuesResponse:
        lookups = await self._cache.get_many(
            current_caller(), request.namespace, list(request.keys)
        )
        self._count_reads(request.namespace, lookups)
        return pb.BatchGetValuesResponse(lookups=[_lookup_to_proto(item) for item in lookups])

    async def BatchSetValues(
        self, request: pb.BatchSetValuesRequest, context: Context
    ) -> pb.BatchSetValuesResponse:
        entries = [
            EntryWrite(entry.key, entry.value, _optional_ttl(entry)) for entry in request.entries
        ]
        evicted = await self._cache.set_many(
            current_caller(), request.namespace, entries, ttl=_optional_ttl(request)
        )
        self._count_write(request.namespace, len(entries), evicted)
        return pb.BatchSetValuesResponse(evicted_count=evicted)

    async def InvalidateNamespace(
        self, request: pb.InvalidateNamespaceRequest, context: Context
    ) -> pb.InvalidateNamespaceResponse:
        dropped = await self._cache.invalidate(current_caller(), request.namespace)
        self._count(request.namespace, "invalidate")
        return pb.InvalidateNamespaceResponse(invalidated_count=dropped)

    async def GetNamespaceStats(
        self, request: pb.GetNamespaceStatsRequest, context: Context
    ) -> pb.GetNamespaceStatsResponse:
        stats = await self._cache.stats(current_caller(), request.namespace)
        return pb.GetNamespaceStatsResponse(
            hits=stats.hits,
            misses=stats.misses,
            hit_ratio=stats.hit_ratio,
            entries=stats.entries,
            evictions=stats.evictions,
            bytes=stats.bytes,
            max_entries=stats.max_entries,
            invalidations=stats.invalidations,
        )
