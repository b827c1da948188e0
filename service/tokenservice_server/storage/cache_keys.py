"""Key names of the cache database (SPEC section 4: ``cache:{namespace}:...``).

The cache lives in its own database (``redis.cache_db``), apart from auth data, so its
names are kept here rather than in ``keys.py``. Per namespace ``ns`` at generation
``gen`` (the number of times the namespace was invalidated):

| key | type | holds |
|---|---|---|
| ``cache:{ns}:{key}`` (gen 0), ``cache:{ns}@{gen}:{key}`` | string, TTL | the value |
| ``cache_lru:{ns}:{gen}`` | sorted set, TTL | key -> access sequence (LRU order) |
| ``cache_exp:{ns}:{gen}`` | sorted set, TTL | key -> expiry, Unix ms |
| ``cache_sizes:{ns}:{gen}`` | hash, TTL | key -> value size in bytes |
| ``cache_lease:{ns}:{gen}:{key}`` | string, TTL | fill-lease token (stampede protection) |
| ``cache_retired:{ns}`` | sorted set, TTL | invalidated generations still holding entries |
| ``cache_generations`` | hash | ns -> current generation (absent: 0) |
| ``cache_stats`` | hash | ``{ns}:hits``/``misses``/``evictions``/``invalidations``/``bytes`` |
| ``cache_config`` | hash | ``{ns}:max_entries``: the namespace's own entry cap |

Generation 0 uses the plain ``cache:{ns}:{key}``, so values written before namespaces had
generations (``cache:resource:popular_recipes``) are read as namespace ``resource``, key
``popular_recipes``. Later generations put ``@{gen}`` after the namespace: ``@`` cannot
occur in a namespace, so no key of one generation can collide with another's.

The scripts read the generation and build these names in the same round trip; they
follow exactly the functions below (the integration tests hold both to that).
"""

from __future__ import annotations

__all__ = [
    "CONFIG",
    "GENERATIONS",
    "STATS",
    "config_field",
    "expiry_key",
    "lease_key",
    "lru_key",
    "retired_key",
    "sizes_key",
    "stats_field",
    "value_key",
]

GENERATIONS = "cache_generations"
STATS = "cache_stats"
CONFIG = "cache_config"


def value_key(namespace: str, generation: int, key: str) -> str:
    if generation == 0:
        return f"cache:{namespace}:{key}"
    return f"cache:{namespace}@{generation}:{key}"


def lru_key(namespace: str, generation: int) -> str:
    return f"cache_lru:{namespace}:{generation}"


def expiry_key(namespace: str, generation: int) -> str:
    return f"cache_exp:{namespace}:{generation}"


def sizes_key(namespace: str, generation: int) -> str:
    return f"cache_sizes:{namespace}:{generation}"


def lease_key(namespace: str, generation: int, key: str) -> str:
    return f"cache_lease:{namespace}:{generation}:{key}"


def retired_key(namespace: str) -> str:
    return f"cache_retired:{namespace}"


def stats_field(namespace: str, counter: str) -> str:
    return f"{namespace}:{counter}"


def config_field(namespace: str, setting: str) -> str:
    return f"{namespace}:{setting}"
