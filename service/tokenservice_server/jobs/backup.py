"""``tokenservice backup`` / ``tokenservice restore``: a logical backup of the auth DB, the
cache DB or both, as JSON lines.

The first line is a header::

    {"format": "tokenservice-backup", "format_version": 1, "data_model_version": 1,
     "created": 1767225600.123, "dbs": ["auth", "cache"]}

then one line per key::

    {"db": "auth", "key": "auth:client:web", "type": "hash", "value": {...},
     "pttl": 86399000, "t": 12}

``pttl`` is the remaining TTL in ms when the key was read (-1: none) and ``t`` the ms
between ``created`` and that read, so a restore computes what is left exactly:
``pttl - (now - (created + t))``. Values by type: string -> str; hash -> {field: value};
set -> [member]; zset -> [[member, score]]; list -> [item]; stream -> [[id, {field:
value}]] (entries only: consumer groups are not backed up). A key, field, member or value
that is not UTF-8 is written as ``{"b64": "..."}``.

Keys are listed with SCAN and read in pipelined batches (TYPE and PTTL, then a read per
type), so the server is never blocked by the whole keyspace and the file is streamed,
never held in memory. A key changed during the backup is saved as one of its states
(SCAN's guarantees: every key present from start to end is included once at least).

Restore refuses a backup of a data-model version this code cannot read (``--force``
overrides; an older version that this code reads as is restores), skips
keys whose TTL ran out since, keeps keys that exist unless ``--replace``, and writes in
MULTI/EXEC batches: a key is never visible without its TTL.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Final

from redis.asyncio import Redis

from tokenservice_server.config import Settings
from tokenservice_server.jobs.progress import Progress
from tokenservice_server.logging import get_logger
from tokenservice_server.storage.connection import RedisConnections, open_redis
from tokenservice_server.storage.data_model import (
    DATA_MODEL_VERSION,
    READABLE_DATA_MODEL_VERSIONS,
)

__all__ = [
    "BACKUP_FORMAT",
    "BackupError",
    "RestoreReport",
    "read_data_model_version",
    "restore_lines",
    "run_backup",
    "run_restore",
    "write_backup",
]

_log = get_logger("tokenservice.backup")

BACKUP_FORMAT: Final = "tokenservice-backup"
FORMAT_VERSION: Final = 1
AUTH_CONFIG: Final = "auth_config"
_SCAN_COUNT: Final = 500
_WRITE_BATCH: Final = 200
_CHUNK: Final = 1000  # arguments per write command


class BackupError(RuntimeError):
    """The backup file cannot be restored (format, version, corrupt line)."""


def _enc(raw: bytes) -> str | dict[str, str]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def _dec(value: str | dict[str, str]) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value.encode("utf-8")


async def read_data_model_version(redis: Redis) -> int:
    """``auth_config``'s ``data_model_version`` when init recorded one, else this code's."""
    recorded = await redis.hget(AUTH_CONFIG, "data_model_version")
    if recorded is None:
        return DATA_MODEL_VERSION
    try:
        return int(recorded)
    except ValueError:
        return DATA_MODEL_VERSION


def _databases(redis: RedisConnections, dbs: str) -> list[tuple[str, Redis]]:
    chosen = [("auth", redis.auth), ("cache", redis.cache)]
    return [(name, client) for name, client in chosen if dbs in (name, "both")]


async def _read_batch(client: Redis, names: list[bytes]) -> list[tuple[bytes, str, int, Any]]:
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.type(name)
            pipe.pttl(name)
        meta: list[Any] = await pipe.execute()
    kinds = [(meta[2 * i].decode(), int(meta[2 * i + 1])) for i in range(len(names))]
    async with client.pipeline(transaction=False) as pipe:
        for name, (kind, _) in zip(names, kinds, strict=True):
            if kind == "string":
                pipe.get(name)
            elif kind == "hash":
                pipe.hgetall(name)
            elif kind == "set":
                pipe.smembers(name)
            elif kind == "zset":
                pipe.zrange(name, 0, -1, withscores=True)
            elif kind == "list":
                pipe.lrange(name, 0, -1)
            elif kind == "stream":
                pipe.xrange(name, "-", "+")
            else:
                pipe.exists(name)  # 'none' (gone meanwhile) or a type we do not use
        values: list[Any] = await pipe.execute(raise_on_error=False)
    read: list[tuple[bytes, str, int, Any]] = []
    for name, (kind, pttl), value in zip(names, kinds, values, strict=True):
        if isinstance(value, Exception) or value is None:
            continue  # gone or changed type between the reads
        if kind == "string":
            encoded: Any = _enc(value)
        elif kind == "hash":
            encoded = {_key_text(k): _enc(v) for k, v in value.items()}
            if not value:
                continue
        elif kind == "set":
            encoded = sorted((_enc(m) for m in value), key=str)
        elif kind == "zset":
            encoded = [[_enc(m), s] for m, s in value]
        elif kind == "list":
            encoded = [_enc(item) for item in value]
        elif kind == "stream":
            encoded = [
                [entry_id.decode(), {_key_text(k): _enc(v) for k, v in fields.items()}]
                for entry_id, fields in value
            ]
        else:
            _log.warning("backup_skipped_key", type=kind)
            continue
        if kind != "string" and not encoded:
            continue
        read.append((name, kind, pttl, encoded))
    return read


def _key_text(raw: bytes) -> str:
    """Hash fields as JSON object keys: UTF-8 text, else 'b64:' + base64 (never a prefix
    the service uses in field names)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "\x00b64:" + base64.b64encode(raw).decode("ascii")


def _key_bytes(text: str) -> bytes:
    if text.startswith("\x00b64:"):
        return base64.b64decode(text[5:])
    return text.encode("utf-8")


async def write_backup(
    redis: RedisConnections, dbs: str, out: IO[str], *, progress: Progress | None = None
) -> dict[str, int]:
    """Stream the backup of ``dbs`` ('auth', 'cache' or 'both') to ``out``; key counts."""
    created = time.time()
    databases = _databases(redis, dbs)
    header = {
        "format": BACKUP_FORMAT,
        "format_version": FORMAT_VERSION,
        "data_model_version": await read_data_model_version(redis.auth),
        "created": round(created, 3),
        "dbs": [name for name, _ in databases],
    }
    out.write(json.dumps(header) + "\n")
    counts: dict[str, int] = {}
    for db, client in databases:
        counts[db] = 0
        async for names in _scan_batches(client):
            for name, kind, pttl, value in await _read_batch(client, names):
                line = {
                    "db": db,
                    "key": _enc(name),
                    "type": kind,
                    "value": value,
                    "pttl": pttl,
                    "t": round((time.time() - created) * 1000),
                }
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
                counts[db] += 1
            if progress:
                progress.update(f"backup: {db} {counts[db]} keys")
    if progress:
        progress.done(f"backup: {', '.join(f'{db} {n} keys' for db, n in counts.items())}")
    out.flush()
    _log.info("backup_done", duration_s=round(time.time() - created, 3), **counts)
    return counts


def _as_bytes(name: bytes | str) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else name


async def _scan_batches(client: Redis) -> AsyncIterator[list[bytes]]:
    cursor = 0
    seen: set[bytes] = set()  # SCAN may return a key twice
    while True:
        cursor, names = await client.scan(cursor, count=_SCAN_COUNT)
        fresh = [_as_bytes(name) for name in names if name not in seen]
        seen.update(fresh)
        if fresh:
            yield fresh
        if cursor == 0:
            return


@dataclass
class RestoreReport:
    data_model_version: int = 0
    restored: dict[str, int] = field(default_factory=dict)
    skipped_expired: int = 0
    skipped_existing: int = 0
    replaced: int = 0
    skipped_db: int = 0
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "data_model_version": self.data_model_version,
            "restored": dict(self.restored),
            "skipped_expired": self.skipped_expired,
            "skipped_existing": self.skipped_existing,
            "replaced": self.replaced,
            "skipped_other_db": self.skipped_db,
        }

    def summary(self) -> str:
        restored = ", ".join(f"{db} {n}" for db, n in self.restored.items()) or "nothing"
        return (
            f"restored {restored}; skipped {self.skipped_expired} expired since the backup, "
            f"{self.skipped_existing} existing (use --replace to overwrite); "
            f"replaced {self.replaced}"
        )


def _write(pipe: Any, name: bytes, kind: str, value: Any) -> None:
    if kind == "string":
        pipe.set(name, _dec(value))
    elif kind == "hash":
        items = [(_key_bytes(k), _dec(v)) for k, v in value.items()]
        for part in _chunks(items):
            pipe.hset(name, mapping=dict(part))
    elif kind == "set":
        for part in _chunks([_dec(m) for m in value]):
            pipe.sadd(name, *part)
    elif kind == "zset":
        for part in _chunks([(_dec(m), float(s)) for m, s in value]):
            pipe.zadd(name, dict(part))
    elif kind == "list":
        for part in _chunks([_dec(item) for item in value]):
            pipe.rpush(name, *part)
    elif kind == "stream":
        for entry_id, fields in value:
            pipe.xadd(name, {_key_bytes(k): _dec(v) for k, v in fields.items()}, id=entry_id)
    else:
        raise BackupError(f"unsupported type {kind!r}")


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def restore_lines(
    redis: RedisConnections,
    lines: Iterable[str],
    *,
    dbs: str = "both",
    replace: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore the backup ``lines`` (header first) into ``redis``."""
    iterator = iter(lines)
    try:
        header = json.loads(next(iterator))
    except (StopIteration, ValueError):
        raise BackupError("not a tokenservice backup: the header line is missing") from None
    if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
        raise BackupError("not a tokenservice backup: unknown header")
    version = int(header.get("data_model_version", 0))
    report = RestoreReport(data_model_version=version)
    if version not in READABLE_DATA_MODEL_VERSIONS and not force:
        raise BackupError(
            f"the backup has data-model version {version}, this tokenservice writes "
            f"{DATA_MODEL_VERSION}: migrate it or restore with --force"
        )
    created = float(header["created"])
    clients = dict(_databases(redis, dbs))
    pending: dict[str, list[dict[str, Any]]] = {db: [] for db in clients}
    for number, raw in enumerate(iterator, start=2):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            db = line["db"]
        except (ValueError, KeyError, TypeError):
            raise BackupError(f"line {number}: not a backup record") from None
        if db not in clients:
            report.skipped_db += 1
            continue
        pending[db].append(line)
        if len(pending[db]) >= _WRITE_BATCH:
            await _restore_batch(clients[db], db, pending[db], created, replace, report)
            pending[db] = []
            if progress:
                progress.update(f"restore: {report.summary()}")
    for db, batch in pending.items():
        if batch:
            await _restore_batch(clients[db], db, batch, created, replace, report)
    if progress:
        progress.done(f"restore: {report.summary()}")
    _log.info(
        "restore_done",
        **{k: v for k, v in report.as_dict().items() if k != "restored"},
        **{f"restored_{db}": n for db, n in report.restored.items()},
    )
    return report


async def _restore_batch(
    client: Redis,
    db: str,
    batch: list[dict[str, Any]],
    created: float,
    replace: bool,
    report: RestoreReport,
) -> None:
    now = time.time()
    live: list[tuple[bytes, dict[str, Any], int]] = []
    for line in batch:
        pttl = int(line["pttl"])
        remaining = -1
        if pttl >= 0:
            read_at = created + int(line.get("t", 0)) / 1000
            remaining = round(pttl - (now - read_at) * 1000)
            if remaining <= 0:
                report.skipped_expired += 1
                continue
        live.append((_dec(line["key"]), line, remaining))
    if not live:
        return
    async with client.pipeline(transaction=False) as pipe:
        for name, _, _ in live:
            pipe.exists(name)
        exists: list[int] = await pipe.execute()
    async with client.pipeline(transaction=True) as pipe:
        for (name, line, remaining), present in zip(live, exists, strict=True):
            if present:
                if not replace:
                    report.skipped_existing += 1
                    continue
                report.replaced += 1
                pipe.delete(name)
            _write(pipe, name, line["type"], line["value"])
            if remaining > 0:
                pipe.pexpire(name, remaining)
            report.restored[db] = report.restored.get(db, 0) + 1
        await pipe.execute()


@contextmanager
def _open(path: str, mode: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout if "w" in mode else sys.stdin
        return
    with open(path, mode, encoding="utf-8") as handle:
        yield handle


async def run_backup(
    settings: Settings, dbs: str, output: str, *, progress: Progress | None = None
) -> dict[str, int]:
    async with open_redis(settings.redis, log=_log) as redis:
        with _open(output, "w") as out:
            return await write_backup(redis, dbs, out, progress=progress)


async def run_restore(
    settings: Settings,
    source: str,
    *,
    dbs: str = "both",
    replace: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreReport:
    async with open_redis(settings.redis, log=_log) as redis:
        with _open(source, "r") as lines:
            return await restore_lines(
                redis, lines, dbs=dbs, replace=replace, force=force, progress=progress
            )
