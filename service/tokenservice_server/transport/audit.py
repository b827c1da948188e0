"""Runs an administrative RPC body and records it in the audit trail, whatever its outcome.

Who comes from the caller-authorization layer (the bearer token's client id) and the mTLS
layer (the client-certificate identity), the request id from the RPC's log context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from tokenservice_server import log_context
from tokenservice_server.domain.audit import AuditEvent, AuditInStep, AuditTrail
from tokenservice_server.domain.errors import DomainError
from tokenservice_server.transport.caller_auth import optional_caller
from tokenservice_server.transport.mtls import current_peer_identity

__all__ = ["audited", "audited_in_step"]

T = TypeVar("T")

#: A refused request's target is whatever the caller sent: at most this many characters
#: are kept (log lines and stream entries stay small), and characters that could disguise
#: a log line (control and format characters such as right-to-left overrides, line and
#: paragraph separators: everything ``str.isprintable`` rejects) are escaped.
_MAX_TARGET = 256


def _loggable(target: str) -> str:
    if len(target) <= _MAX_TARGET and target.isprintable():
        return target
    escaped = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in target[:_MAX_TARGET]
    )
    if len(escaped) > _MAX_TARGET or len(target) > _MAX_TARGET:
        escaped = f"{escaped[:_MAX_TARGET]}...({len(target)} characters)"
    return escaped


async def audited(
    trail: AuditTrail | None,
    context: grpc.aio.ServicerContext[Any, Any],
    action: str,
    target: str,
    body: Callable[[], Awaitable[T]],
    *,
    detail: Callable[[T], Mapping[str, str]] | None = None,
    target_of: Callable[[T], str] | None = None,
) -> T:
    """``await body()``, then record ``action`` on ``target`` as "ok" or "failed"."""
    return await _audit(
        trail, context, action, target, lambda _: body(), detail=detail, target_of=target_of
    )


async def audited_in_step(
    trail: AuditTrail | None,
    context: grpc.aio.ServicerContext[Any, Any],
    action: str,
    target: str,
    body: Callable[[AuditInStep | None], Awaitable[T]],
    *,
    detail: Callable[[T], Mapping[str, str]],
) -> T:
    """Like :func:`audited`, but ``body`` hands the entry to its storage step, which
    writes it atomically with the action; only a failure before that step (invalid
    input) is recorded here."""
    return await _audit(trail, context, action, target, body, detail=detail, in_step=True)


async def _audit(
    trail: AuditTrail | None,
    context: grpc.aio.ServicerContext[Any, Any],
    action: str,
    target: str,
    body: Callable[[AuditInStep | None], Awaitable[T]],
    *,
    detail: Callable[[T], Mapping[str, str]] | None = None,
    target_of: Callable[[T], str] | None = None,
    in_step: bool = False,
) -> T:
    if trail is None:
        return await body(None)
    caller = optional_caller()
    request_id = log_context.bound().get("request_id", "")

    def event(outcome: str, reason: str = "", **extra: Any) -> AuditEvent:
        return AuditEvent(
            action=action,
            target=_loggable(extra.pop("target", target)),
            outcome=outcome,
            time=trail.clock(),
            actor=caller.client_id if caller is not None else "",
            actor_identity=(caller.peer_identity if caller is not None else "")
            or current_peer_identity(),
            peer=str(context.peer() or ""),
            request_id=str(request_id),
            reason=reason,
            detail=extra.pop("detail", {}),
        )

    step = AuditInStep(event("ok")) if in_step else None

    async def settle(outcome: str, reason: str = "", **extra: Any) -> None:
        if step is not None and step.written:
            trail.log(event(outcome, reason, **extra))
        else:
            await trail.record(event(outcome, reason, **extra))

    try:
        result = await body(step)
    except DomainError as exc:
        await settle("failed", exc.reason)
        raise
    except grpc.aio.AbortError:
        await settle("failed", "ABORTED_BY_SERVER")
        raise
    except Exception as exc:
        await settle("failed", type(exc).__name__)
        raise
    extra: dict[str, Any] = {}
    if detail is not None:
        extra["detail"] = dict(detail(result))
    if target_of is not None:
        extra["target"] = target_of(result)
    await settle("ok", **extra)
    return result
