"""The fields every log line of the running RPC carries: its request id, and what the
handlers learn on the way (the caller's client id, a Check's result, the mTLS identity).

One dict per RPC in one ``ContextVar``: the observability interceptor starts it
(:func:`start_rpc`), handlers add to it (:func:`bind`), and the :func:`merge` processor
adds it to each event. structlog's ``contextvars`` module did the
same with one ``ContextVar`` per key, which cost a Check ~8,000 instructions per
``bind_contextvars`` and the interceptor a clear and a bind per RPC (docs/performance.md).

A task started during an RPC shares its dict (the context is copied, the dict is not):
what either binds later, both log. Nothing here binds from such a task.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

__all__ = ["bind", "bound", "fields", "merge", "start_rpc"]

_fields: ContextVar[dict[str, Any] | None] = ContextVar("log_fields", default=None)


def start_rpc(request_id: str) -> None:
    """A new RPC: its lines carry ``request_id`` and what is bound from now on."""
    _fields.set({"request_id": request_id})


def bind(**values: Any) -> None:
    """Add ``values`` to every later log line of the running RPC (or task)."""
    fields().update(values)


def fields() -> dict[str, Any]:
    """The running RPC's fields, to add to in place (cheaper than :func:`bind` on a hot
    path: no keyword dict); a new one is started if there is none."""
    current = _fields.get()
    if current is None:
        current = {}
        _fields.set(current)
    return current


def bound() -> Mapping[str, Any]:
    """What the running RPC's lines carry so far."""
    return _fields.get() or {}


def merge(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The structlog processor: the bound fields the event does not set itself (after
    its own keys, as structlog's ``merge_contextvars`` adds them)."""
    current = _fields.get()
    if current:
        for key, value in current.items():
            event_dict.setdefault(key, value)
    return event_dict
