"""`tokenservice backup` / `restore`: backup, FLUSHALL, restore gives back identical keys,
values and TTLs; a backup of another data-model version is refused unless forced; keys
that expired since the backup are skipped. And `tokenservice stats` on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.harness.grpc_server import bearer
from tests.harness.redis_servers import RedisProcess
from tests.helpers import tool
from tests.integration.cache_support import cache_caller, entry
from tests.integration.oauth2_support import CC, oauth_server
from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.storage.data_model import DATA_MODEL_VERSION, READABLE_DATA_MODEL_VERSIONS


def _cli(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    clean.update(
        TOKENSERVICE_LOG_FORMAT="json",
        TOKENSERVICE_AUTH__SECRET_PEPPER="backup-test-pepper-0123456789abcdef01234",
    )
    return subprocess.run(
        [tool("tokenservice"), *args, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
        input=stdin,
    )


def _dump(client: redis.Redis) -> dict[bytes, tuple[bytes, Any, int]]:
    """Every key: type, content (order-insensitive where the type is) and PTTL."""
    found: dict[bytes, tuple[bytes, Any, int]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        content: Any
        if kind == b"hash":
            content = client.hgetall(key)
        elif kind == b"zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            content = client.get(key)
        elif kind == b"set":
            content = client.smembers(key)
        elif kind == b"list":
            content = client.lrange(key, 0, -1)
        elif kind == b"stream":
            content = client.xrange(key)
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        found[key] = (kind, content, client.pttl(key))
    return found


async def _workload(valkey: RedisProcess, app_factory: Any) -> None:
    """Clients, every kind of token, sessions, revocations and cache values."""
    async with oauth_server(app_factory, valkey) as oauth:
        web = await oauth.client()
        for subject in ("alice", "bob", "carol"):
            created = await oauth.tokens.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(subject=subject, client_id=web.client_id),
                    ttl_seconds=3600,
                ),
                metadata=bearer(oauth.admin_token),
                timeout=5,
            )
            tokens = await oauth.code_flow(
                web, subject=subject, session_id=created.session.session_id
            )
            await oauth.refresh(web, tokens.refresh_token)
        revoked = await oauth.code_flow(web, subject="dave")
        await oauth.revoke(revoked.refresh_token, client=web)
        service = await oauth.client(grant_types=(CC,), redirect_uris=())
        for _ in range(5):
            await oauth.client_credentials(service)
        cache = await cache_caller(
            oauth.channel,
            oauth.admin_token,
            "filler",
            ["cache:recipes:write", "cache:recipes:read", "cache:img:write"],
        )
        await cache.batch_set("recipes", [entry(f"r{i}", f"v{i}".encode()) for i in range(40)])
        await cache.batch_set("img", [entry("logo", bytes(range(256)), ttl=120)])
        await cache.invalidate("recipes")
        await cache.batch_set("recipes", [entry("again", b"x", ttl=300)])
        await cache.get("recipes", "again")
        await cache.get("recipes", "missing")


async def test_backup_flush_restore_gives_back_every_key_value_and_ttl(
    valkey: RedisProcess, app_factory: Any, tmp_path: Path
) -> None:
    await _workload(valkey, app_factory)
    auth, cache = valkey.client(decode_responses=False), valkey.client(db=1, decode_responses=False)
    # Types the service does not write today (an audit stream, a list), binary names.
    auth.xadd("audit_test_stream", {"action": "client.create", "who": "admin"})
    auth.xadd("audit_test_stream", {b"bin\xff": b"\x00\x01"})
    auth.rpush("some_list", b"a", b"\xfe", b"c")
    cache.set(b"cache:bin\xff:key", b"\x00\xff", px=90_000)
    before = {"auth": _dump(auth), "cache": _dump(cache)}
    dumped_at = time.monotonic()
    assert len(before["auth"]) > 40
    assert len(before["cache"]) > 10

    backup = tmp_path / "backup.jsonl"
    made = _cli("backup", "--output", str(backup), url=valkey.url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {k: len(v) for k, v in before.items()}
    header = json.loads(backup.read_text().splitlines()[0])
    assert header["format"] == "tokenservice-backup"
    assert header["data_model_version"] == DATA_MODEL_VERSION
    assert header["dbs"] == ["auth", "cache"]

    auth.flushall()
    restored = _cli("restore", "--input", str(backup), "--json", url=valkey.url)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["restored"] == {k: len(v) for k, v in before.items()}
    assert report["skipped_expired"] == 0

    after = {"auth": _dump(auth), "cache": _dump(cache)}
    # The original TTLs would have run down by this much meanwhile, too.
    elapsed_ms = (time.monotonic() - dumped_at) * 1000
    for db in ("auth", "cache"):
        assert after[db].keys() == before[db].keys()
        for key, (kind, content, pttl) in before[db].items():
            new_kind, new_content, new_pttl = after[db][key]
            assert (new_kind, new_content) == (kind, content), key
            if pttl < 0:
                assert new_pttl == pttl, key
            else:
                assert abs(new_pttl - (pttl - elapsed_ms)) < 1000, (key, pttl, new_pttl)

    # Existing keys are kept unless --replace; stdin works as the source.
    again = _cli("restore", "--db", "auth", "--json", url=valkey.url, stdin=backup.read_text())
    assert again.returncode == 0, again.stderr
    kept = json.loads(again.stdout)
    assert kept["skipped_existing"] == len(before["auth"])
    assert kept["skipped_other_db"] == len(before["cache"])
    replaced = _cli("restore", "-i", str(backup), "--replace", "--json", url=valkey.url)
    assert json.loads(replaced.stdout)["replaced"] == len(before["auth"]) + len(before["cache"])

    # stats on the same data: counts and a hit ratio, as a table and as JSON.
    stats = _cli("stats", "--json", url=valkey.url)
    assert stats.returncode == 0, stats.stderr
    summary = json.loads(stats.stdout)
    tokens = summary["auth"]["tokens"]
    assert tokens["access_tokens"]["live"] >= 3 + 3 + 5
    assert tokens["sessions"]["live"] == 3
    assert summary["auth"]["clients"] == 4  # admin, web, service, filler
    assert summary["auth"]["memory_bytes"]["access_tokens"] > 0
    assert summary["cache"]["namespaces"]["recipes"]["entries"] == 1
    assert summary["cache"]["namespaces"]["recipes"]["hit_ratio"] == 0.5
    assert summary["auth"]["data_model_version"] == DATA_MODEL_VERSION
    table = _cli("stats", url=valkey.url)
    assert table.returncode == 0, table.stderr
    assert "AUTH DB" in table.stdout
    assert "access_tokens" in table.stdout
    assert "recipes" in table.stdout


def test_restore_refuses_another_data_model_version_and_skips_what_expired(
    valkey: RedisProcess, tmp_path: Path
) -> None:
    client = valkey.client()
    created = time.time() - 10  # the backup was taken ten seconds ago
    lines = [
        {
            "format": "tokenservice-backup",
            "format_version": 1,
            "data_model_version": DATA_MODEL_VERSION + 1,
            "created": created,
            "dbs": ["auth"],
        },
        {"db": "auth", "key": "gone", "type": "string", "value": "x", "pttl": 5_000, "t": 0},
        {"db": "auth", "key": "left", "type": "string", "value": "y", "pttl": 60_000, "t": 0},
        {"db": "auth", "key": "kept", "type": "set", "value": ["a", "b"], "pttl": -1, "t": 0},
    ]
    backup = tmp_path / "old.jsonl"
    backup.write_text("".join(json.dumps(line) + "\n" for line in lines))

    refused = _cli("restore", "-i", str(backup), url=valkey.url)
    assert refused.returncode == 1
    assert "data-model version" in refused.stdout + refused.stderr
    assert client.dbsize() == 0

    forced = _cli("restore", "-i", str(backup), "--force", "--json", url=valkey.url)
    assert forced.returncode == 0, forced.stderr
    report = json.loads(forced.stdout)
    assert report["skipped_expired"] == 1
    assert report["restored"] == {"auth": 2}
    assert not client.exists("gone")
    # 60 s - 10 s since the backup - the restore's own start-up (a CLI process)
    assert 45_000 < client.pttl("left") <= 50_000
    assert client.smembers("kept") == {"a", "b"}
    assert client.ttl("kept") == -1


def test_a_backup_of_data_model_1_restores_as_this_code_reads_it(
    valkey: RedisProcess, tmp_path: Path
) -> None:
    """Version 2 only changed how new access tokens are indexed and reads version 1 data as
    is, so a version 1 backup (here: an access token indexed the old way) needs no --force."""
    assert DATA_MODEL_VERSION == 2
    assert {1, 2} == READABLE_DATA_MODEL_VERSIONS
    hexdigest = "ab" * 32
    expiry, member = int(time.time()) + 900, f"a:{'ab' * 32}"
    record = {"c": "svc", "s": "read", "i": str(expiry - 900), "e": str(expiry), "j": "0123"}
    lines: list[dict[str, Any]] = [
        {
            "format": "tokenservice-backup",
            "format_version": 1,
            "data_model_version": 1,
            "created": time.time(),
            "dbs": ["auth"],
        },
        {
            "db": "auth",
            "key": f"auth:access_token:{hexdigest}",
            "type": "hash",
            "value": record,
            "pttl": 900_000,
            "t": 0,
        },
        {
            "db": "auth",
            "key": "auth:client_tokens:svc",
            "type": "set",
            "value": [member],
            "pttl": 900_000,
            "t": 0,
        },
        {
            "db": "auth",
            "key": "auth_token_cleanup",
            "type": "zset",
            "value": [[member, expiry]],
            "pttl": -1,
            "t": 0,
        },
        {
            "db": "auth",
            "key": "auth_index_cleanup",
            "type": "zset",
            "value": [[f"{member}|svc|||", expiry]],
            "pttl": -1,
            "t": 0,
        },
    ]
    backup = tmp_path / "v1.jsonl"
    backup.write_text("".join(json.dumps(line) + "\n" for line in lines))
    restored = _cli("restore", "-i", str(backup), "--json", url=valkey.url)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["restored"] == {"auth": 4}
    client = valkey.client()
    assert client.hgetall(f"auth:access_token:{hexdigest}") == record
    assert client.smembers("auth:client_tokens:svc") == {member}
