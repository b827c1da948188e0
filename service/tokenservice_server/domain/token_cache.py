"""The hot-token cache: positive access-token lookups kept in process, by token digest.

Check and caller authentication resolve the same few tokens over and over; each entry
saves the Redis round trip of the next lookup. A cached token must never outlive its
revocation for long, so:

* Every revocation script publishes what it revoked on ``auth:revocations``
  (``storage/lua/_tokens.lua``): ``t:<digest>`` for one access token, ``f:<family>``,
  ``c:<client>``, ``u:<subject>`` or ``n:<session>`` for an index. Each replica's
  subscriber (``storage/revocation_feed.py``) calls :meth:`TokenCache.invalidate`, which
  drops every entry carrying that attribute.
* While the subscriber is not subscribed (start-up, a dropped connection, a failover),
  the cache is *bypassed*: :meth:`get` misses and :meth:`put` stores nothing, and going
  down or coming back up clears it, as messages may have been missed.
* Entries expire ``ttl`` seconds after they were stored whatever happens: the bound for
  a failure the subscriber has not detected yet (a silently lost message or connection).
* A fill that raced an invalidation is refused: :meth:`put` takes the :attr:`epoch` read
  before the Redis lookup and stores nothing if any invalidation arrived since.

Only live tokens are cached (no negative entries): an unknown token always asks Redis.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenservice_server.domain.tokens import Caller, TokenRecord, caller_of

if TYPE_CHECKING:
    from tokenservice_server.domain.access_check import AccessDecision, RouteRequirements

__all__ = ["CachedToken", "TokenCache", "attribute_keys", "family_key", "token_key"]


@dataclass(slots=True, eq=False)
class CachedToken:
    """One cached live token: what the lookup found, and one memo of the checker's (the
    only field ever assigned after the entry is made, hence not a value object)."""

    record: TokenRecord
    client_rate_limit: float  # the client's own Check limit (0: none), from the lookup
    stored_at: float
    caller: Caller  # the token's caller, made once here rather than on every hit
    # The access checker's last answer for this live token and the route it was for
    # (AccessChecker._without_redis): it goes with the entry, on expiry or invalidation.
    judged_route: RouteRequirements | None = None
    judged: AccessDecision | None = None


def token_key(digest: str) -> str:
    """The invalidation key of one access token."""
    return f"t:{digest}"


def family_key(family_id: str) -> str:
    """The invalidation key of a grant family's tokens."""
    return f"f:{family_id}"


def attribute_keys(record: TokenRecord) -> list[str]:
    """The invalidation keys that name this token (see the module docstring)."""
    found = [token_key(record.digest), f"c:{record.client_id}"]
    if record.family_id:
        found.append(family_key(record.family_id))
    if record.subject:
        found.append(f"u:{record.subject}")
    if record.session_id:
        found.append(f"n:{record.session_id}")
    return found


class TokenCache:
    """A bounded LRU of live access tokens, indexed by every attribute revocation names."""

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock  # monotonic
        self._entries: OrderedDict[str, CachedToken] = OrderedDict()
        self._by_key: dict[str, set[str]] = {}
        self._up = False
        self._epoch = 0
        #: Lookups answered and not (a bypassed cache misses): plain counts, read by the
        #: metrics at each scrape (a callback per lookup cost every hot Check).
        self.hits = 0
        self.misses = 0

    @property
    def up(self) -> bool:
        """Whether invalidations are being received (the cache is in use)."""
        return self._up

    @property
    def epoch(self) -> int:
        """Changes with every invalidation and every up/down transition."""
        return self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self.clear()

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._by_key.clear()

    def get(self, digest: str) -> CachedToken | None:
        entry = self._entries.get(digest) if self._up else None
        if entry is not None:
            if self._clock() - entry.stored_at < self._ttl:
                self._entries.move_to_end(digest)
                self.hits += 1
                return entry
            self._drop(digest)
        self.misses += 1
        return None

    def put(self, record: TokenRecord, client_rate_limit: float, epoch: int) -> None:
        """Cache a live token looked up when :attr:`epoch` was ``epoch``."""
        if not self._up or epoch != self._epoch or self._max <= 0:
            return
        digest = record.digest
        if digest in self._entries:
            self._drop(digest)
        self._entries[digest] = CachedToken(
            record, client_rate_limit, self._clock(), caller_of(record)
        )
        for key in attribute_keys(record):
            self._by_key.setdefault(key, set()).add(digest)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop every entry named by one of ``keys`` (``t:<digest>``, ``f:<family>``...)."""
        self._epoch += 1
        for key in keys:
            for digest in list(self._by_key.get(key, ())):
                self._drop(digest)

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is None:
            return
        for key in attribute_keys(entry.record):
            members = self._by_key.get(key)
            if members is not None:
                members.discard(digest)
                if not members:
                    del self._by_key[key]
