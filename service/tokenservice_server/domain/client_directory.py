"""A bounded in-process cache of client records, checked against the store's generation.

The token endpoint needs the client record on every call. Reading it from Redis each
time would cost a second round trip; instead the write script that issues a token is
given the generation of the record we authenticated against and refuses (``stale``)
when the stored one differs, so a rotated secret or a deleted client takes effect on the
very next request on every replica, never "eventually".
"""

from __future__ import annotations

from collections import OrderedDict

from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.ports import ClientStore

__all__ = ["ClientDirectory"]


class ClientDirectory:
    def __init__(self, store: ClientStore, capacity: int) -> None:
        self._store = store
        self._capacity = capacity
        self._records: OrderedDict[str, ClientRecord] = OrderedDict()

    async def get(self, client_id: str, *, fresh: bool = False) -> ClientRecord | None:
        if not fresh:
            cached = self._records.get(client_id)
            if cached is not None:
                self._records.move_to_end(client_id)
                return cached
        record = await self._store.get(client_id)
        if record is None:
            self._records.pop(client_id, None)
        elif self._capacity > 0:
            self._records[client_id] = record
            self._records.move_to_end(client_id)
            while len(self._records) > self._capacity:
                self._records.popitem(last=False)
        return record

    def holds(self, client_id: str) -> bool:
        return client_id in self._records

    def forget(self, client_id: str) -> None:
        self._records.pop(client_id, None)
