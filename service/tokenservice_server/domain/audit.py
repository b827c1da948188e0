"""The audit trail of administrative actions: who did what to which target, when, and
how it ended.

Every client create/update/delete/secret rotation, bulk revocation and session end is
recorded, successful or not, as one structured log event (``event=audit``) and as one
entry of a bounded Redis stream (``auth_audit``), readable with ``tokenservice audit``.
An entry never holds a credential: targets are client ids, subjects and session ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tokenservice_server.domain.value_object import value_object
from tokenservice_server.logging import get_logger

__all__ = ["AuditEvent", "AuditInStep", "AuditSink", "AuditTrail"]

_log = get_logger("tokenservice.audit")


@value_object
class AuditEvent:
    action: str  # e.g. "client.create", "tokens.revoke", "session.end"
    target: str  # e.g. "client:web", "subject:alice", "session:s-1"
    outcome: str  # "ok" or "failed"
    time: float  # Unix seconds
    actor: str = ""  # the calling client id (bearer token), "" when unauthenticated
    actor_identity: str = ""  # the mTLS client-certificate identity, when any
    peer: str = ""  # the gRPC peer address
    request_id: str = ""
    reason: str = ""  # on failure: the ErrorInfo reason or status name
    detail: Mapping[str, str] = field(default_factory=dict)  # e.g. revoked_token_count

    def fields(self) -> dict[str, str]:
        """Flat string fields (the stream entry and the log event)."""
        flat = {
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "time": f"{self.time:.3f}",
            "actor": self.actor,
            "actor_identity": self.actor_identity,
            "peer": self.peer,
            "request_id": self.request_id,
            "reason": self.reason,
        }
        for key, value in self.detail.items():
            flat.setdefault(key, value)
        return flat

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> AuditEvent:
        known = {
            "action",
            "target",
            "outcome",
            "time",
            "actor",
            "actor_identity",
            "peer",
            "request_id",
            "reason",
        }
        return cls(
            action=fields.get("action", ""),
            target=fields.get("target", ""),
            outcome=fields.get("outcome", ""),
            time=float(fields.get("time", "0") or 0),
            actor=fields.get("actor", ""),
            actor_identity=fields.get("actor_identity", ""),
            peer=fields.get("peer", ""),
            request_id=fields.get("request_id", ""),
            reason=fields.get("reason", ""),
            detail={k: v for k, v in fields.items() if k not in known},
        )


@dataclass
class AuditInStep:
    """An audit entry written by the audited action's own storage step, atomically with
    it (no extra round trip, and no action without its entry). The step records the
    outcome and its count under ``count_field``, then sets ``written``."""

    event: AuditEvent  # what is known before the step (outcome "ok", no detail yet)
    count_field: str = "revoked_token_count"
    written: bool = False

    def fields(self) -> dict[str, str]:
        """The entry's fields without ``outcome`` and ``reason`` (the step adds them)."""
        flat = self.event.fields()
        del flat["outcome"], flat["reason"]
        return flat


class AuditSink(Protocol):
    async def append(self, event: AuditEvent) -> None: ...

    async def recent(self, limit: int) -> list[tuple[str, AuditEvent]]: ...


class AuditTrail:
    """Logs an audit event and appends it to the sink; never fails the audited action."""

    def __init__(self, sink: AuditSink, clock: Callable[[], float]) -> None:
        self._sink = sink
        self.clock = clock

    def log(self, event: AuditEvent) -> None:
        """The structured log event alone (the stream entry was written elsewhere)."""
        log = _log.info if event.outcome == "ok" else _log.warning
        log("audit", **event.fields())

    async def record(self, event: AuditEvent) -> None:
        self.log(event)
        try:
            await self._sink.append(event)
        except Exception as exc:  # the action already happened; the log event stands
            _log.error(
                "audit_write_failed",
                action=event.action,
                target=event.target,
                error=type(exc).__name__,
            )

    async def recent(self, limit: int) -> list[tuple[str, AuditEvent]]:
        return await self._sink.recent(limit)
