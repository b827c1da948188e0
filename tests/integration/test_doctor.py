"""`tokenservice doctor`: a healthy deployment passes, and the faults an on-call engineer
meets first (a stopped replica, an eviction policy that may drop auth data) fail it, each
with a fix hint."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.harness.redis_servers import RedisProcess, SentinelTopology
from tests.helpers import tool
from tokenservice_server.config import Settings, load_settings
from tokenservice_server.jobs.doctor import DoctorReport, Status, run_doctor
from tokenservice_server.storage.data_model import DATA_MODEL_VERSION


def _doctor_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    env["TOKENSERVICE_LOG_FORMAT"] = "json"
    return subprocess.run(
        [tool("tokenservice"), "doctor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _config(tmp_path: Path, redis: dict[str, Any]) -> Path:
    path = tmp_path / "doctor.yaml"
    path.write_text(json.dumps({"redis": redis}))  # JSON is YAML
    return path


def _settings(redis: dict[str, Any]) -> Settings:
    return load_settings(None, {"redis": redis})


def _prepare_healthy(node: RedisProcess, *, auth_db: int = 0, cache_db: int = 1) -> None:
    """What a well-run deployment looks like: init ran, the cleanup jobs just ran."""
    now = str(time.time())
    with node.client(db=auth_db) as auth:
        auth.hset("auth_config", "data_model_version", str(DATA_MODEL_VERSION))
        auth.hset("auth_cleanup_metrics", "last_run", now)
    with node.client(db=cache_db) as cache:
        cache.hset("cache_cleanup_metrics", "last_run", now)


def _by_check(report: DoctorReport) -> dict[str, Status]:
    return {finding.check: finding.status for finding in report.findings}


async def test_a_healthy_standalone_redis_passes(redis_server_factory: Any, tmp_path: Path) -> None:
    node = redis_server_factory(
        name="healthy", extra_config=["maxmemory 256mb", "maxmemory-policy noeviction"]
    )
    _prepare_healthy(node)

    report = await run_doctor(_settings({"url": node.url}))
    statuses = _by_check(report)
    assert set(statuses.values()) == {Status.OK}, report.render()
    for check in (
        "redis auth db",
        "redis cache db",
        "replication",
        "memory",
        "scripts",
        "data model",
        "cleanup tokens",
        "cleanup cache",
        "clock",
    ):
        assert check in statuses

    # The command: exit 0, even with --strict, and a machine-readable report.
    result = _doctor_cli(_config(tmp_path, {"url": node.url}), "--json", "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["ok"] is True
    assert parsed["counts"] == {"ok": len(report.findings), "warn": 0, "fail": 0}


async def test_an_older_data_model_this_code_reads_is_a_warning(valkey: Any) -> None:
    """Data model 1 (access tokens indexed the earlier way) is served as is by this code:
    a warning to record the new version, not a failure; an unknown older one fails."""
    _prepare_healthy(valkey)
    with valkey.client() as auth:
        auth.hset("auth_config", "data_model_version", "1")
    report = await run_doctor(_settings({"url": valkey.url}))
    finding = next(f for f in report.findings if f.check == "data model")
    assert finding.status is Status.WARN, report.render()
    assert "tokenservice init" in finding.hint
    assert report.exit_code() == 0

    with valkey.client() as auth:
        auth.hset("auth_config", "data_model_version", "0")
    report = await run_doctor(_settings({"url": valkey.url}))
    finding = next(f for f in report.findings if f.check == "data model")
    assert finding.status is Status.FAIL


async def test_an_unsafe_eviction_policy_fails_with_a_fix(valkey: Any, tmp_path: Path) -> None:
    _prepare_healthy(valkey)
    with valkey.client() as client:
        client.config_set("maxmemory", "256mb")
        client.config_set("maxmemory-policy", "allkeys-lru")

    report = await run_doctor(_settings({"url": valkey.url}))
    memory = next(finding for finding in report.findings if finding.check == "memory")
    assert memory.status is Status.FAIL
    assert "allkeys-lru" in memory.summary
    assert "CONFIG SET maxmemory-policy noeviction" in memory.hint
    assert report.exit_code() == 1

    result = _doctor_cli(_config(tmp_path, {"url": valkey.url}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  memory" in result.stdout
    assert "fix: redis-cli CONFIG SET maxmemory-policy noeviction" in result.stdout

    # A missing maxmemory is only a warning (exit 0), but --strict makes it count.
    with valkey.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "0")
    report = await run_doctor(_settings({"url": valkey.url}))
    assert _by_check(report)["memory"] is Status.WARN
    assert report.exit_code() == 0
    assert report.exit_code(strict=True) == 1


async def test_a_stopped_replica_fails_the_sentinel_checks(
    sentinel_topology: SentinelTopology,
) -> None:
    master = sentinel_topology.master_node()
    _prepare_healthy(master)
    settings = _settings(
        {"sentinels": sentinel_topology.sentinel_addresses, "master_name": "tokenservice"}
    )
    before = await run_doctor(settings)
    statuses = _by_check(before)
    assert before.exit_code() == 0, before.render()
    sentinel_checks = [check for check in statuses if check.startswith("sentinel ")]
    assert len(sentinel_checks) == 4  # three sentinels and their agreement
    replicas = [check for check in statuses if check.startswith("replica ")]
    assert len(replicas) == 2
    assert all(statuses[check] is Status.OK for check in [*sentinel_checks, *replicas])

    stopped = (
        sentinel_topology.nodes[1]
        if master is not sentinel_topology.nodes[1]
        else (sentinel_topology.nodes[2])
    )
    stopped.kill()
    after = await run_doctor(settings)
    statuses = _by_check(after)
    assert after.exit_code() == 1, after.render()
    replica = next(f for f in after.findings if f.check == f"replica {stopped.host}:{stopped.port}")
    assert replica.status is Status.FAIL
    assert replica.hint
    assert statuses["replication"] is Status.FAIL
    # The master, the sentinels and the other replica are still fine.
    assert statuses["redis auth db"] is Status.OK
    assert statuses["sentinel agreement"] is Status.OK
    assert "FAIL" in after.render()
