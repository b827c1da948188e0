"""``tokenservice cleanup tokens`` / ``tokenservice cleanup cache``: the maintenance CronJobs.

Tokens, sessions and cache values expire by their Redis TTLs; what stays behind are the
entries that *index* them: the expiry sorted sets (``auth_token_cleanup``,
``auth_refresh_token_cleanup``, ``auth_session_cleanup``), the bulk-revocation sets
(``auth:client_tokens:*``, ``auth:family:*``, ``auth:subject_tokens:*``,
``auth:session_tokens:*``) and the cache's per-namespace ``cache_lru``/``cache_exp``/
``cache_sizes`` indexes plus invalidated generations. These jobs remove them.

Cost is proportional to what expired: every sorted set is scored by expiry and read with
``ZRANGEBYSCORE -inf now LIMIT 0 batch``; a token's cleanup entry names the index sets
it is in (an access token's ``auth_token_cleanup`` member, a refresh token's
``auth_index_cleanup`` entry), so nothing is scanned. Each batch is one Lua script
(atomic, safe under live traffic). A lock (``SET NX PX``, refreshed by every batch and
checked inside the script) keeps two runs from sharing the work: the second one finds
the lock and exits with nothing to do, or waits for it with ``--wait``.

Results go to ``auth_cleanup_metrics`` (auth DB) / ``cache_cleanup_metrics`` (cache DB):
``last_run`` (Unix seconds, end of the last successful run), ``last_duration_seconds``,
``last_batches``, ``last_removed_<kind>``, ``runs_total`` and ``removed_<kind>_total``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from redis.asyncio import Redis

from tokenservice_server.config import Settings
from tokenservice_server.jobs.progress import Progress
from tokenservice_server.logging import get_logger
from tokenservice_server.storage import cache_keys, keys
from tokenservice_server.storage.connection import open_redis
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = [
    "AUTH_CLEANUP_LOCK",
    "AUTH_CLEANUP_METRICS",
    "CACHE_CLEANUP_LOCK",
    "CACHE_CLEANUP_METRICS",
    "CleanupResult",
    "cleanup_cache",
    "cleanup_tokens",
    "prometheus_text",
    "run_cleanup",
]

_log = get_logger("tokenservice.cleanup")

AUTH_CLEANUP_METRICS: Final = "auth_cleanup_metrics"
CACHE_CLEANUP_METRICS: Final = "cache_cleanup_metrics"
AUTH_CLEANUP_LOCK: Final = "auth_cleanup_lock"
CACHE_CLEANUP_LOCK: Final = "cache_cleanup_lock"
DEFAULT_TOKEN_BATCH: Final = 500
DEFAULT_CACHE_BATCH: Final = 200
DEFAULT_LOCK_TTL: Final = 60.0

Target = Literal["tokens", "cache"]

_TOKEN_KINDS: Final = (
    "index_entries",
    "index_memberships",
    "access_tokens",
    "refresh_tokens",
    "sessions",
)
_CACHE_KINDS: Final = ("expired_entries", "retired_entries", "retired_generations")


@dataclass
class CleanupResult:
    """What one run did. ``status`` is ``done`` or ``skipped`` (another run holds the lock)."""

    target: Target
    status: str = "done"
    removed: dict[str, int] = field(default_factory=dict)
    rescheduled: int = 0
    batches: int = 0
    duration_seconds: float = 0.0
    started_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "removed": dict(self.removed),
            "rescheduled": self.rescheduled,
            "batches": self.batches,
            "duration_seconds": round(self.duration_seconds, 6),
            "started_at": self.started_at,
        }


class _Lock:
    """A ``SET NX PX`` lock with a random token; the batch scripts check and extend it."""

    def __init__(self, redis: Redis, scripts: ScriptRegistry, name: str, ttl: float) -> None:
        self.redis, self.scripts, self.name = redis, scripts, name
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.token = secrets.token_hex(16)

    async def acquire(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if await self.redis.set(self.name, self.token, nx=True, px=self.ttl_ms):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def release(self) -> None:
        await self.scripts.call("release_lock", keys=[self.name], args=[self.token])


async def _record(
    redis: Redis, metrics_key: str, result: CleanupResult, finished_at: float
) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            metrics_key,
            mapping={
                "last_run": f"{finished_at:.3f}",
                "last_started": f"{result.started_at:.3f}",
                "last_duration_seconds": f"{result.duration_seconds:.6f}",
                "last_batches": result.batches,
                "last_rescheduled": result.rescheduled,
                **{f"last_removed_{kind}": count for kind, count in result.removed.items()},
            },
        )
        pipe.hincrby(metrics_key, "runs_total", 1)
        for kind, count in result.removed.items():
            if count:
                pipe.hincrby(metrics_key, f"removed_{kind}_total", count)
        await pipe.execute()


async def cleanup_tokens(
    redis: Redis,
    *,
    batch: int = DEFAULT_TOKEN_BATCH,
    lock_ttl: float = DEFAULT_LOCK_TTL,
    wait: float = 0.0,
    progress: Progress | None = None,
    scripts: ScriptRegistry | None = None,
) -> CleanupResult:
    """Remove expired token, session and index entries from the auth DB ``redis``."""
    scripts = scripts or ScriptRegistry(redis)
    result = CleanupResult("tokens", removed=dict.fromkeys(_TOKEN_KINDS, 0))

    async def work(lock: _Lock) -> None:
        while True:
            reply = await scripts.call(
                "cleanup_tokens",
                keys=[
                    keys.INDEX_CLEANUP,
                    keys.TOKEN_CLEANUP,
                    keys.REFRESH_CLEANUP,
                    keys.SESSION_CLEANUP,
                    lock.name,
                ],
                args=[batch, keys.AUTH_ROOT, lock.token, lock.ttl_ms],
            )
            held, *counts, rescheduled, left = (int(value) for value in reply)
            if not held:
                raise RuntimeError(f"lost the cleanup lock {lock.name} (expired mid-run)")
            result.batches += 1
            for kind, count in zip(_TOKEN_KINDS, counts, strict=True):
                result.removed[kind] += count
            result.rescheduled += rescheduled
            if progress:
                progress.update(_progress_text(result, left))
            if left == 0:
                return

    return await _locked_run(
        redis,
        scripts,
        result,
        AUTH_CLEANUP_LOCK,
        AUTH_CLEANUP_METRICS,
        lock_ttl,
        wait,
        work,
        progress,
    )


async def _cache_namespaces(redis: Redis) -> list[str]:
    """Namespaces that hold or held entries: each has counters in ``cache_stats`` (its
    ``bytes``) or a generation; never a scan of the keyspace."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hkeys(cache_keys.GENERATIONS)
        pipe.hkeys(cache_keys.STATS)
        generations, counters = await pipe.execute()
    names = {raw.decode() for raw in generations}
    names.update(raw.decode().rpartition(":")[0] for raw in counters)
    names.discard("")
    return sorted(names)


async def cleanup_cache(
    redis: Redis,
    *,
    batch: int = DEFAULT_CACHE_BATCH,
    lock_ttl: float = DEFAULT_LOCK_TTL,
    wait: float = 0.0,
    progress: Progress | None = None,
    scripts: ScriptRegistry | None = None,
) -> CleanupResult:
    """Remove expired index entries and invalidated generations from the cache DB ``redis``."""
    scripts = scripts or ScriptRegistry(redis)
    result = CleanupResult("cache", removed=dict.fromkeys(_CACHE_KINDS, 0))

    async def work(lock: _Lock) -> None:
        for namespace in await _cache_namespaces(redis):
            more = 1
            while more:
                reply = await scripts.call(
                    "cleanup_cache",
                    keys=[cache_keys.GENERATIONS, cache_keys.STATS, lock.name],
                    args=[namespace, batch, lock.token, lock.ttl_ms],
                )
                held, *counts, more = (int(value) for value in reply)
                if not held:
                    raise RuntimeError(f"lost the cleanup lock {lock.name} (expired mid-run)")
                result.batches += 1
                for kind, count in zip(_CACHE_KINDS, counts, strict=True):
                    result.removed[kind] += count
                if progress:
                    progress.update(f"{_progress_text(result, None)} [{namespace}]")

    return await _locked_run(
        redis,
        scripts,
        result,
        CACHE_CLEANUP_LOCK,
        CACHE_CLEANUP_METRICS,
        lock_ttl,
        wait,
        work,
        progress,
    )


def _progress_text(result: CleanupResult, left: int | None) -> str:
    removed = ", ".join(f"{kind} {count}" for kind, count in result.removed.items() if count)
    tail = f"; {left} expired left" if left is not None else ""
    return f"cleanup {result.target}: batch {result.batches}: {removed or 'nothing yet'}{tail}"


async def _locked_run(
    redis: Redis,
    scripts: ScriptRegistry,
    result: CleanupResult,
    lock_name: str,
    metrics_key: str,
    lock_ttl: float,
    wait: float,
    work: Callable[[_Lock], Awaitable[None]],
    progress: Progress | None,
) -> CleanupResult:
    lock = _Lock(redis, scripts, lock_name, lock_ttl)
    result.started_at = round(time.time(), 3)
    started = time.monotonic()
    if not await lock.acquire(wait):
        result.status = "skipped"
        _log.info(
            "cleanup_skipped",
            target=result.target,
            reason=f"another run holds the lock {lock_name}; it does the work",
        )
        return result
    try:
        await work(lock)
    finally:
        await lock.release()
        if progress:
            progress.done()
    result.duration_seconds = time.monotonic() - started
    await _record(redis, metrics_key, result, time.time())
    _log.info(
        "cleanup_done",
        target=result.target,
        batches=result.batches,
        rescheduled=result.rescheduled,
        duration_s=round(result.duration_seconds, 3),
        **{f"removed_{kind}": count for kind, count in result.removed.items()},
    )
    return result


async def run_cleanup(
    settings: Settings,
    target: Target,
    *,
    batch: int | None = None,
    lock_ttl: float = DEFAULT_LOCK_TTL,
    wait: float = 0.0,
    progress: Progress | None = None,
) -> CleanupResult:
    """The CLI entry point: connect per ``settings`` and clean ``target``."""
    async with open_redis(settings.redis, log=_log) as redis:
        if target == "tokens":
            return await cleanup_tokens(
                redis.auth,
                batch=batch or DEFAULT_TOKEN_BATCH,
                lock_ttl=lock_ttl,
                wait=wait,
                progress=progress,
            )
        return await cleanup_cache(
            redis.cache,
            batch=batch or DEFAULT_CACHE_BATCH,
            lock_ttl=lock_ttl,
            wait=wait,
            progress=progress,
        )


def prometheus_text(result: CleanupResult) -> str:
    """The result in the Prometheus text format (node-exporter textfile collector)."""
    job = result.target
    lines = [
        "# HELP tokenservice_cleanup_last_success_timestamp_seconds End of the last cleanup run.",
        "# TYPE tokenservice_cleanup_last_success_timestamp_seconds gauge",
        f'tokenservice_cleanup_last_success_timestamp_seconds{{job="{job}"}} '
        f"{result.started_at + result.duration_seconds:.3f}",
        "# HELP tokenservice_cleanup_duration_seconds Duration of the last cleanup run.",
        "# TYPE tokenservice_cleanup_duration_seconds gauge",
        f'tokenservice_cleanup_duration_seconds{{job="{job}"}} {result.duration_seconds:.6f}',
        "# HELP tokenservice_cleanup_removed Entries the last cleanup run removed, by kind.",
        "# TYPE tokenservice_cleanup_removed gauge",
    ]
    lines += [
        f'tokenservice_cleanup_removed{{job="{job}",kind="{kind}"}} {count}'
        for kind, count in result.removed.items()
    ]
    return "\n".join(lines) + "\n"
