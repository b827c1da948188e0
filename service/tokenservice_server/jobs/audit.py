"""``tokenservice audit``: the newest entries of the audit trail (the ``auth_audit`` stream).

A table for people by default; ``--json`` prints one JSON object per line (newest first)
for scripts and log pipelines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from tokenservice_server.config import Settings
from tokenservice_server.domain.audit import AuditEvent
from tokenservice_server.logging import get_logger
from tokenservice_server.storage.audit_store import RedisAuditStore
from tokenservice_server.storage.connection import open_redis

__all__ = ["format_table", "read_audit", "run_audit"]

_log = get_logger("tokenservice.audit")


async def read_audit(settings: Settings, limit: int) -> list[tuple[str, AuditEvent]]:
    async with open_redis(settings.redis, log=_log) as redis:
        store = RedisAuditStore(redis.auth, settings.auth.audit_max_entries)
        return await store.recent(limit)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_table(entries: list[tuple[str, AuditEvent]]) -> str:
    header = ("time", "action", "target", "outcome", "actor", "identity", "detail")
    rows = [header]
    for _, event in entries:
        outcome = event.outcome if not event.reason else f"{event.outcome} ({event.reason})"
        detail = " ".join(f"{key}={value}" for key, value in sorted(event.detail.items()))
        rows.append(
            (
                _when(event.time),
                event.action,
                event.target,
                outcome,
                event.actor or "-",
                event.actor_identity or "-",
                detail,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def run_audit(
    settings: Settings, *, limit: int, as_json: bool, out: TextIO = sys.stdout
) -> int:
    entries = await read_audit(settings, limit)
    if as_json:
        for entry_id, event in entries:
            out.write(json.dumps({"id": entry_id, **event.fields()}) + "\n")
    else:
        out.write(format_table(entries) + "\n")
    return 0
