"""The ``auth_audit`` stream: a bounded Redis stream of audit events (auth DB).

Each append is one ``XADD auth_audit MAXLEN ~ <bound> * field value ...``: trimming
happens in the same command, so the stream never grows past the bound (plus at most
one radix-tree node, ``stream-node-max-entries``, because trimming is approximate).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from tokenservice_server.domain.audit import AuditEvent, AuditInStep
from tokenservice_server.storage import keys

__all__ = ["RedisAuditStore", "audit_in_step_args"]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def audit_in_step_args(audit: AuditInStep | None, max_entries: int) -> list[str]:
    """The ARGV tail of a script that writes its own audit entry (``revoke_index.lua``):
    the stream bound ('' for no entry), the count field, then the entry's fields."""
    if audit is None:
        return [""]
    flat = [part for pair in audit.fields().items() for part in pair]
    return [str(max_entries), audit.count_field, *flat]


class RedisAuditStore:
    def __init__(self, redis: Redis, max_entries: int) -> None:
        self._redis = redis
        self._max_entries = max_entries

    async def append(self, event: AuditEvent) -> None:
        await self._redis.xadd(
            keys.AUDIT_STREAM,
            dict(event.fields()),  # type: ignore[arg-type]
            maxlen=self._max_entries,
            approximate=True,
        )

    async def recent(self, limit: int) -> list[tuple[str, AuditEvent]]:
        """The newest ``limit`` entries, newest first, as (stream id, event)."""
        rows: list[Any] = list(await self._redis.xrevrange(keys.AUDIT_STREAM, count=limit) or [])
        return [
            (_text(entry_id), AuditEvent.from_fields({_text(k): _text(v) for k, v in row.items()}))
            for entry_id, row in rows
        ]
