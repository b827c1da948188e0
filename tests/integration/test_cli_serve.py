"""`tokenservice serve` as operators run it: a real process, signals and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import eventually, free_port, tool


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    env.update(TOKENSERVICE_LOG_FORMAT="json", **extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("tokenservice"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "--listen", "not-an-address"], "listen"),
        (["serve", "--metrics-listen", "127.0.0.1:70000"], "metrics_listen"),
        (["serve", "--redis-url", "http://localhost:6379"], "redis.url"),
    ],
)
def test_invalid_flags_exit_2_naming_the_setting(args: list[str], named: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert f"invalid setting {named} " in result.stderr


def test_invalid_config_file_and_env_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "tokenservice.yaml"
    config.write_text("redis:\n  max_connections: 0\n")
    result = _run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "invalid setting redis.max_connections" in result.stderr

    result = _run("serve", env=_env(TOKENSERVICE_SHUTDOWN_GRACE="forever"))
    assert result.returncode == 2
    assert "TOKENSERVICE_SHUTDOWN_GRACE" in result.stderr


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def _valkey_processes_using(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" in cmdline and cwd.startswith(str(data_dir)):
            pids.append(int(entry.name))
    return pids


async def _wait_serving(target: str, timeout: float) -> None:
    async with grpc.aio.insecure_channel(target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)

        async def serving() -> bool:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

        await eventually(serving, timeout=timeout, interval=0.2)


async def _start_serve(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        tool("tokenservice"),
        "serve",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def _events(stderr: bytes) -> list[dict[str, Any]]:
    events = []
    for line in stderr.decode().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def test_serve_on_embedded_valkey_then_sigterm(tmp_path: Path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    data_dir = tmp_path / "var"
    process = await _start_serve(
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--data-dir",
        str(data_dir),
        env=_env(),
    )
    try:
        await _wait_serving(f"127.0.0.1:{grpc_port}", timeout=30)
        assert _valkey_processes_using(data_dir), "the embedded valkey-server is not running"
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert b"grpc_server_handled_total" in metrics
        # serve moved the started server's objects out of the collector's sight
        # (app.settle_heap): tens of thousands of them, never 0.
        frozen = re.search(rb"^tokenservice_gc_frozen_objects (\S+)$", metrics, re.MULTILINE)
        assert frozen is not None
        assert float(frozen.group(1)) > 10_000
        assert re.search(rb"^process_resident_memory_bytes \d", metrics, re.MULTILINE)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    names = [event["event"] for event in _events(stderr)]
    assert "server_started" in names
    assert names.index("shutdown_requested") < names.index("server_stopped")
    assert any("embedded" in json.dumps(event) for event in _events(stderr))
    assert not _valkey_processes_using(data_dir), "the embedded valkey-server outlived serve"
    assert any(data_dir.rglob("*.aof*")) or (data_dir / "appendonlydir").exists()


async def test_port_already_taken_exits_1(valkey: Any) -> None:
    grpc_port = free_port()
    env = _env(
        TOKENSERVICE_REDIS__URL=valkey.url,
        TOKENSERVICE_AUTH__SECRET_PEPPER="cli-test-pepper-0123456789abcdef0123456789",
    )
    first = await _start_serve(
        "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", "127.0.0.1:0", env=env
    )
    try:
        await _wait_serving(f"127.0.0.1:{grpc_port}", timeout=30)
        second = await asyncio.to_thread(
            _run,
            "serve",
            "--listen",
            f"127.0.0.1:{grpc_port}",
            "--metrics-listen",
            "127.0.0.1:0",
            env=env,
        )
        assert second.returncode == 1
        assert "serve_failed" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.communicate(), timeout=30)
    assert first.returncode == 0
