"""Bounded memos of what the hot paths computed lately (decoded records, packed commands,
well-formed digests): plain dicts kept to a size, the oldest entry evicted first."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

_K = TypeVar("_K")
_V = TypeVar("_V")


def remember(entries: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """``entries[key] = value`` with ``entries`` kept to ``limit`` entries: a new key in a
    full dict evicts the oldest one (dicts keep insertion order). Only the event loop's
    thread uses these memos, so nothing is locked."""
    if len(entries) >= limit and key not in entries:
        del entries[next(iter(entries))]
    entries[key] = value
