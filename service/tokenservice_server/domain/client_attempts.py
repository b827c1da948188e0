"""Running a grant step against a client record that may change underneath it.

Grant steps are authorized against a cached client record and verified in Redis against
its generation in the same script that writes; a "stale" answer means another replica
changed the client, so the record is re-read and the step re-checked from scratch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import ClientRecord
from tokenservice_server.domain.errors import BackendUnavailable, DomainError

__all__ = ["STALE", "Settled", "with_current_client"]

T = TypeVar("T")
STALE = None  # what an attempt returns when the stored client generation differed
_ATTEMPTS = 3


class Settled(Exception):
    """A failure that storage decided against the current client record (its generation
    check passed): final, raised as is. Deciding again would only repeat the step's side
    effects, e.g. count one reuse of a code or refresh token twice."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(error.message)
        self.error = error


async def with_current_client(
    directory: ClientDirectory,
    client_id: str,
    attempt: Callable[[ClientRecord | None], Awaitable[T | None]],
) -> T:
    fresh = False
    for _ in range(_ATTEMPTS):
        cached = not fresh and directory.holds(client_id)
        record = await directory.get(client_id, fresh=fresh)
        try:
            result = await attempt(record)
        except Settled as settled:
            settled.error.attempt_counted = True
            raise settled.error from None
        except DomainError:
            if not cached:
                raise
            # The generation check only runs for requests the cached copy accepts, so a
            # copy older than a change made through another replica (a rotated secret,
            # widened scopes) must not refuse what the stored record allows: decide
            # again on the current record (one extra read, on failures only).
            result = STALE
        if result is not STALE:
            return result
        directory.forget(client_id)
        fresh = True
    raise BackendUnavailable("the client record kept changing during the request; retry")
