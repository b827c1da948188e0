"""What the server's Redis clients write, one entry per write (one write = one round trip).

Counted below every client path: the socket writer of pooled connections (redis-py's own
send and the leaner one of ``storage/lean.py``) and the write of the shared, pipelined
connection (``storage/shared_connection.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tokenservice_server.storage import shared_connection

__all__ = ["on_redis_writes"]


def on_redis_writes(monkeypatch: pytest.MonkeyPatch, record: Callable[[bytes], None]) -> None:
    """Call ``record`` with the bytes of every write to Redis until the test ends."""
    writelines = asyncio.StreamWriter.writelines
    shared_send = shared_connection._Replies.send

    def pooled(writer: asyncio.StreamWriter, data: Iterable[Any]) -> None:
        chunks = list(data)
        record(b"".join(bytes(chunk) for chunk in chunks))
        writelines(writer, chunks)

    def shared(replies: Any, packed: Iterable[Any], entry: Any, count: int) -> None:
        chunks = list(packed)
        record(b"".join(bytes(chunk) for chunk in chunks))
        shared_send(replies, chunks, entry, count)

    monkeypatch.setattr(asyncio.StreamWriter, "writelines", pooled)
    monkeypatch.setattr(shared_connection._Replies, "send", shared)
