"""Token records by digest: the hot-token cache first, Redis for the rest.

Caller authentication and introspection resolve the same few tokens over and over; an
access token this replica has seen live recently comes from the hot-token cache
(``domain/token_cache.py``, dropped on every replica when a revocation is published)
and costs no round trip. The misses are looked up together in one pipelined round trip
and the live access tokens among them are cached. Refresh tokens are never cached.
"""

from __future__ import annotations

import math

from tokenservice_server.domain.ports import TokenStore
from tokenservice_server.domain.token_cache import CachedToken, TokenCache
from tokenservice_server.domain.tokens import TokenKind, TokenRecord

__all__ = ["TokenLookup"]


class TokenLookup:
    def __init__(self, tokens: TokenStore, cache: TokenCache | None) -> None:
        self._tokens = tokens
        self._cache = cache

    def cached(self, digest: str) -> TokenRecord | None:
        """The hot-token cache's record of a live access token, None on a miss (the
        caller then looks it up with :meth:`look_up`)."""
        hit = self.cached_entry(digest)
        return hit.record if hit is not None else None

    def cached_entry(self, digest: str) -> CachedToken | None:
        """The hot-token cache's entry of a live access token (its record and caller)."""
        cache = self._cache
        return cache.get(digest) if cache is not None else None

    async def look_up(self, wanted: list[tuple[TokenKind, str]]) -> list[TokenRecord | None]:
        """The live, unrevoked record of each (kind, digest), in order, None if unknown,
        from Redis (the cache's misses): one round trip; the live access tokens found are
        cached."""
        cache = self._cache
        epoch = cache.epoch if cache is not None else 0
        found = await self._tokens.find_tokens(wanted)
        if cache is not None:
            for (kind, _), record in zip(wanted, found, strict=True):
                if record is not None and kind is TokenKind.ACCESS:
                    # The client's Check limit is unknown here: inf makes Check ask Redis.
                    cache.put(record, math.inf, epoch)
        return found
