"""``tokenservice stats``: an operator's summary of the auth and cache databases.

Counts come from the structures that already hold them (the expiry sorted sets, the
client index, ``auth_stats``, ``cache_stats``), never from a scan of the keyspace; memory
per key kind is ``MEMORY USAGE`` of a random sample (``ZRANDMEMBER`` of the matching
sorted set) times the count, so it is an estimate whose cost does not grow with the data.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from redis.asyncio import Redis

from tokenservice_server.config import Settings
from tokenservice_server.jobs.backup import read_data_model_version
from tokenservice_server.jobs.cleanup import (
    AUTH_CLEANUP_METRICS,
    CACHE_CLEANUP_METRICS,
    _cache_namespaces,
)
from tokenservice_server.logging import get_logger
from tokenservice_server.storage import cache_keys, keys
from tokenservice_server.storage.connection import open_redis

__all__ = ["auth_stats", "cache_stats", "collect_stats", "render_table"]

_log = get_logger("tokenservice.stats")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _memory(redis: Redis, names: list[str]) -> list[int]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name, samples=5)
        replies: list[Any] = await pipe.execute()
    return [int(reply or 0) for reply in replies]


async def _sampled(redis: Redis, index: str, to_key: Any, count: int, samples: int) -> int:
    """Estimated bytes of the ``count`` keys named by members of ``index`` (``to_key`` gets
    the raw member: access tokens' members hold raw digest bytes)."""
    if count == 0 or samples <= 0:
        return 0
    members: list[bytes] = await redis.zrandmember(index, samples) or []  # type: ignore[assignment]
    sizes = [size for size in await _memory(redis, [to_key(m) for m in members]) if size]
    return round(sum(sizes) / len(sizes) * count) if sizes else 0


async def auth_stats(redis: Redis, *, samples: int = 50) -> dict[str, Any]:
    now = int((await redis.time())[0])
    kinds = {
        "access_tokens": (
            keys.TOKEN_CLEANUP,
            lambda m: keys.access_token_key(keys.member_digest(m)[1]),
        ),
        "refresh_tokens": (
            keys.REFRESH_CLEANUP,
            lambda m: keys.refresh_token_key(keys.member_digest(m)[1]),
        ),
        "sessions": (keys.SESSION_CLEANUP, lambda m: keys.session_key(_text(m))),
    }
    async with redis.pipeline(transaction=False) as pipe:
        pipe.dbsize()
        pipe.zcard(keys.CLIENTS_INDEX)
        for index, _ in kinds.values():
            pipe.zcount(index, now + 1, "+inf")
            pipe.zcount(index, "-inf", now)
        pipe.zcard(keys.INDEX_CLEANUP)
        pipe.zcount(keys.INDEX_CLEANUP, "-inf", now)
        pipe.hgetall(keys.AUTH_STATS)
        pipe.hgetall(AUTH_CLEANUP_METRICS)
        replies: list[Any] = await pipe.execute()
    dbsize, clients = replies[0], replies[1]
    counts: dict[str, dict[str, int]] = {}
    for position, kind in enumerate(kinds):
        live, expired = replies[2 + 2 * position], replies[3 + 2 * position]
        counts[kind] = {"live": int(live), "expired_awaiting_cleanup": int(expired)}
    index_entries, index_expired, counters, cleanup = replies[8:12]
    memory: dict[str, int] = {
        "clients": await _sampled(
            redis, keys.CLIENTS_INDEX, lambda m: keys.client_key(_text(m)), clients, samples
        )
    }
    for kind, (index, to_key) in kinds.items():
        memory[kind] = await _sampled(redis, index, to_key, counts[kind]["live"], samples)
    structures = [
        keys.TOKEN_CLEANUP,
        keys.REFRESH_CLEANUP,
        keys.SESSION_CLEANUP,
        keys.INDEX_CLEANUP,
        keys.CLIENTS_INDEX,
    ]
    for name, size in zip(structures, await _memory(redis, structures), strict=True):
        memory[name] = size
    return {
        "keys": int(dbsize),
        "clients": int(clients),
        "tokens": counts,
        "index_entries": {"total": int(index_entries), "expired_awaiting_cleanup": index_expired},
        "counters": {_text(k): int(v) for k, v in counters.items()},
        "memory_bytes": memory,
        "data_model_version": await read_data_model_version(redis),
        "last_cleanup": _last_cleanup(cleanup, now),
    }


def _last_cleanup(raw: dict[bytes, bytes], now: float) -> dict[str, Any] | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    last = float(fields.get("last_run", "0"))
    return {
        "last_run": last,
        "age_seconds": round(now - last, 1),
        "duration_seconds": float(fields.get("last_duration_seconds", "0")),
        "runs_total": int(fields.get("runs_total", "0")),
    }


async def cache_stats(redis: Redis, *, samples: int = 50) -> dict[str, Any]:
    now = int((await redis.time())[0])
    async with redis.pipeline(transaction=False) as pipe:
        pipe.dbsize()
        pipe.hgetall(cache_keys.STATS)
        pipe.hgetall(cache_keys.GENERATIONS)
        pipe.hgetall(CACHE_CLEANUP_METRICS)
        dbsize, raw_stats, raw_generations, cleanup = await pipe.execute()
    counters = {_text(k): int(v) for k, v in raw_stats.items()}
    generations = {_text(k): int(v) for k, v in raw_generations.items()}
    namespaces: dict[str, Any] = {}
    total_hits = total_misses = 0
    for namespace in await _cache_namespaces(redis):
        generation = generations.get(namespace, 0)
        lru = cache_keys.lru_key(namespace, generation)
        index = [
            lru,
            cache_keys.expiry_key(namespace, generation),
            cache_keys.sizes_key(namespace, generation),
        ]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(lru)
            pipe.zcard(cache_keys.retired_key(namespace))
            entries, retired = await pipe.execute()
        value_bytes = await _sampled(
            redis,
            lru,
            functools.partial(cache_keys.value_key, namespace, generation),
            int(entries),
            samples,
        )
        hits = counters.get(f"{namespace}:hits", 0)
        misses = counters.get(f"{namespace}:misses", 0)
        total_hits, total_misses = total_hits + hits, total_misses + misses
        namespaces[namespace] = {
            "entries": int(entries),
            "generation": generation,
            "retired_generations": int(retired),
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "evictions": counters.get(f"{namespace}:evictions", 0),
            "invalidations": counters.get(f"{namespace}:invalidations", 0),
            "value_bytes": counters.get(f"{namespace}:bytes", 0),
            "memory_bytes": value_bytes + sum(await _memory(redis, index)),
        }
    requests = total_hits + total_misses
    return {
        "keys": int(dbsize),
        "namespaces": namespaces,
        "hits": total_hits,
        "misses": total_misses,
        "hit_ratio": round(total_hits / requests, 4) if requests else None,
        "last_cleanup": _last_cleanup(cleanup, now),
    }


async def collect_stats(settings: Settings, *, samples: int = 50) -> dict[str, Any]:
    async with open_redis(settings.redis, log=_log) as redis:
        memory = await redis.auth.info("memory")
        return {
            "time": round(time.time(), 3),
            "redis": {
                "target": redis.target,
                "used_memory": int(memory.get("used_memory", 0)),
                "maxmemory": int(memory.get("maxmemory", 0)),
                "maxmemory_policy": memory.get("maxmemory_policy", ""),
            },
            "auth": await auth_stats(redis.auth, samples=samples),
            "cache": await cache_stats(redis.cache, samples=samples),
        }


def _bytes(value: int | None) -> str:
    if not value:
        return "0 B"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [line.format(*headers), line.format(*("-" * w for w in widths))] + [
        line.format(*row) for row in rows
    ]


def render_table(stats: dict[str, Any]) -> str:
    auth, cache, server = stats["auth"], stats["cache"], stats["redis"]
    out = [
        f"Redis {server['target']}: used {_bytes(server['used_memory'])}"
        f" of {_bytes(server['maxmemory']) if server['maxmemory'] else 'unlimited'}"
        f" (policy {server['maxmemory_policy']})",
        "",
        f"AUTH DB: {auth['keys']} keys, data model v{auth['data_model_version']}",
    ]
    memory = auth["memory_bytes"]
    rows = [["clients", str(auth["clients"]), "-", _bytes(memory["clients"])]]
    for kind, count in auth["tokens"].items():
        rows.append(
            [kind, str(count["live"]), str(count["expired_awaiting_cleanup"]), _bytes(memory[kind])]
        )
    rows.append(
        [
            "index entries",
            str(auth["index_entries"]["total"]),
            str(auth["index_entries"]["expired_awaiting_cleanup"]),
            _bytes(memory[keys.INDEX_CLEANUP]),
        ]
    )
    out += _table(["kind", "live", "expired (to clean)", "memory (est.)"], rows)
    if auth["counters"]:
        out += [
            "",
            "counters: " + ", ".join(f"{k} {v}" for k, v in sorted(auth["counters"].items())),
        ]
    out += [_cleanup_line("tokens", auth["last_cleanup"]), ""]
    ratio = cache["hit_ratio"]
    out.append(
        f"CACHE DB: {cache['keys']} keys, hit ratio "
        f"{'n/a' if ratio is None else f'{ratio:.1%}'} "
        f"({cache['hits']} hits, {cache['misses']} misses)"
    )
    rows = [
        [
            ns,
            str(v["entries"]),
            "n/a" if v["hit_ratio"] is None else f"{v['hit_ratio']:.1%}",
            str(v["evictions"]),
            str(v["invalidations"]),
            _bytes(v["value_bytes"]),
            _bytes(v["memory_bytes"]),
        ]
        for ns, v in cache["namespaces"].items()
    ]
    out += _table(
        [
            "namespace",
            "entries",
            "hit ratio",
            "evictions",
            "invalidations",
            "value bytes",
            "memory (est.)",
        ],
        rows,
    )
    out.append(_cleanup_line("cache", cache["last_cleanup"]))
    return "\n".join(out)


def _cleanup_line(target: str, last: dict[str, Any] | None) -> str:
    if last is None:
        return f"cleanup {target}: never ran"
    return (
        f"cleanup {target}: last run {last['age_seconds']:.0f} s ago, took "
        f"{last['duration_seconds']:.3f} s ({last['runs_total']} runs)"
    )
