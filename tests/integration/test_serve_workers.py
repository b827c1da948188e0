"""`tokenservice serve --workers N`: N processes on one port (SO_REUSEPORT), one embedded
Valkey, per-worker metrics ports, and SIGTERM that drains them all."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.test_cli_serve import (
    _env,
    _get,
    _start_serve,
    _valkey_processes_using,
    _wait_serving,
)


def _two_free_ports() -> int:
    """A port P with P + 1 free too (the second worker's metrics port)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def _workers_of(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    workers = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(int(child))
    return workers


def _health_checks(metrics: str) -> float:
    pattern = (
        r'grpc_server_handled_total\{[^}]*grpc_method="Check"'
        r'[^}]*grpc_service="grpc.health.v1.Health"[^}]*\} (\S+)'
    )
    return sum(float(value) for value in re.findall(pattern, metrics))


async def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    grpc_port, metrics_port = _two_free_ports(), _two_free_ports()
    data_dir = tmp_path / "var"
    target = f"127.0.0.1:{grpc_port}"
    process = await _start_serve(
        "--workers",
        "2",
        "--listen",
        target,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--data-dir",
        str(data_dir),
        env=_env(),
    )
    workers: list[int] = []
    try:
        await _wait_serving(target, timeout=30)
        workers = _workers_of(process.pid)
        assert len(workers) == 2, workers
        assert len(_valkey_processes_using(data_dir)) == 1  # started once, by the parent
        # Health over many fresh connections: the kernel spreads them over both workers.
        for _ in range(24):
            async with grpc.aio.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        scrapes = [
            (await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port + i}/metrics")).decode()
            for i in range(2)
        ]
        assert all(_health_checks(scrape) > 0 for scrape in scrapes), "one worker got nothing"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    for pid in workers:
        assert _gone(pid), f"worker {pid} still running"
    assert not _valkey_processes_using(data_dir)


def _gone(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()  # a zombie has exited
    except OSError:
        return True
