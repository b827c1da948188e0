"""Instructions per RPC of the real server, counted by callgrind: repeatable where the
bench's timings are not (docs/performance.md, fourth pass).

``make bench-instructions`` (or ``python -m bench.instructions [--calls N] [scenario ...]``)
starts Valkey and, under ``valgrind --tool=callgrind``, one ``tokenservice serve`` per
server the scenarios name (``run.SERVERS``); prepares each scenario through the server,
warms it with 200 calls, then zeroes the counters, makes ``--calls`` calls (20 in
flight from this process) and dumps them: the figure is the server's user-space
instructions, all threads, divided by the calls. The same code gives the same count to
about 0.1% run after run (more if another job loads the machine: idle loops then spin
differently), so a change of 1% is visible, which the bench's throughput is not. It
counts no kernel time and no cache misses: read it next to the bench, not instead of it.
Each server runs about 50 times slower under callgrind: a few minutes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import scenarios
from bench.run import SERVERS
from bench.scenarios import SCENARIOS, Fixture
from bench.stack import ADMIN_CLIENT_ID, ADMIN_SECRET, Server, Valkey, _wait

DEFAULT = ["baseline", "check_valid", "check_cached", "introspect", "issue_cc", "cache_get"]
IN_FLIGHT = 20


class CallgrindServer(Server):
    """``tokenservice serve`` under callgrind; ``count()`` dumps the counters since the last."""

    def start(self) -> None:
        self.out = self.workdir / "callgrind.out"
        log = (self.workdir / "server.log").open("ab")
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.out}",
            "--dump-instr=no",
            sys.executable,
            "-m",
            "tokenservice_server.cli",
            "serve",
        ]
        self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _wait(self._ready, timeout=300, what=f"callgrind {self.name}", process=self.process)
        _wait(self._serving, timeout=300, what=f"callgrind {self.name}", process=self.process)
        self.count()  # start from zero

    def _serving(self) -> bool:
        """Health says SERVING (its first Redis probe is slow under callgrind)."""

        async def ask() -> bool:
            async with grpc.aio.insecure_channel(self.target) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=30
                )
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        try:
            return asyncio.run(ask())
        except grpc.RpcError:
            return False

    def count(self) -> int:
        """Instructions since the previous count (``callgrind_control --dump``)."""
        before = set(self.workdir.glob("callgrind.out.*"))
        subprocess.run(
            ["callgrind_control", "--dump", str(self.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(self.workdir.glob("callgrind.out.*")) - before
            for path in new:
                total = _total(path)
                if total is not None:
                    return total
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no dump")


def _total(path: Path) -> int | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None


async def _calls(target: str, name: str, data: dict[str, Any], calls: int) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        call = SCENARIOS[name].make_call(channel, data, 0, 1)
        per_task = max(1, calls // IN_FLIGHT)

        async def task() -> None:
            for _ in range(per_task):
                await call()

        await asyncio.gather(*(task() for _ in range(IN_FLIGHT)))
        return per_task * IN_FLIGHT


async def _prepare(target: str, name: str) -> dict[str, Any]:
    prepare = SCENARIOS[name].prepare
    if prepare is None:
        return {}
    async with grpc.aio.insecure_channel(target) as channel:
        fixture = Fixture(channel, ADMIN_CLIENT_ID, ADMIN_SECRET)
        await fixture.setup()
        return await prepare(fixture)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls measured per scenario")
    parser.add_argument("names", nargs="*", default=DEFAULT, help="scenarios (bench's names)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    scenarios.CHECK_TOKENS = 50  # preparing is slow under callgrind; the count per call is not
    # The counters' flush would add work that depends on wall time, not on the calls.
    env = {"TOKENSERVICE_EXT_AUTHZ__STATS_FLUSH_INTERVAL": "300"}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tokenservice-instructions-") as tmp:
        workdir = Path(tmp)
        valkey = Valkey(workdir)
        valkey.start()
        servers: dict[str, CallgrindServer] = {}
        try:
            Server(workdir, valkey, name="init").init()
            for name in args.names:
                own = SCENARIOS[name].server
                if own not in servers:
                    servers[own] = CallgrindServer(
                        workdir, valkey, name=own, env={**SERVERS[own], **env}
                    )
                    servers[own].start()
                server = servers[own]
                data = asyncio.run(_prepare(server.target, name))
                asyncio.run(_calls(server.target, name, data, 200))  # warm
                server.count()
                calls = asyncio.run(_calls(server.target, name, data, args.calls))
                results[name] = server.count() / calls
                print(f"{name:<18} {results[name]:>10,.0f} instructions/RPC", flush=True)
        finally:
            for server in servers.values():
                server.stop()
            valkey.stop()
    base = results.get("baseline")
    if base:
        print("\nratio to the baseline (instructions, server side):")
        for name, count in results.items():
            print(f"{name:<18} {base / count:>6.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
