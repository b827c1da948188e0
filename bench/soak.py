"""``make soak``: mixed load for SOAK_SECONDS (default 600) against a server on a real
Sentinel topology (1 master, 2 replicas, 3 sentinels), with a failover every
SOAK_FAILOVER_EVERY seconds (default 120), alternating ``kill -9`` of the master (it
rejoins as a replica) and a graceful switchover (``SENTINEL FAILOVER`` the way
docs/reliability.md prescribes: writes paused on the old master first; a plain one can
drop acknowledged writes). The server runs with ``durability: replicated``, the mode that
promises no acknowledged write is lost. Issue 10, item 6.

The load is closed loop, SOAK_CONCURRENCY (default 16) calls in flight, each picking one
of: IssueToken, Check (valid token, must be allowed), IntrospectToken, RevokeToken then a
Check of the revoked token (must be denied), CacheService SetValue/GetValue. Every
SOAK_INTERVAL (default 10) seconds a row: calls, errors by status, p99, server RSS.
Errors are expected only as UNAVAILABLE inside a failover window; any other error code,
an allowed revoked token, or a server restart fails the run.

    SOAK_SECONDS=60 python -m bench.soak

Writes bench/results/soak.json and prints the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.rpc import code_pb2

from bench.procstat import sample
from bench.scenarios import BENCH_SCOPES, Fixture, bearer, check_request
from bench.stack import ADMIN_CLIENT_ID, ADMIN_SECRET, ROOT, Server
from tests.harness.redis_servers import SentinelTopology  # run from the repository root
from tokenservice.v1 import cache_service_pb2 as cache_pb
from tokenservice.v1 import cache_service_pb2_grpc, token_service_pb2_grpc
from tokenservice.v1 import token_service_pb2 as token_pb

RESULTS = ROOT / "bench" / "results"
OPS = ("issue", "check", "introspect", "revoke", "cache_set", "cache_get")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Window:
    started: float
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Soak:
    fixture: Fixture
    client_token: str
    windows: list[Window] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    revoked_accepted: int = 0
    revocations_checked: int = 0
    stop: bool = False

    @property
    def window(self) -> Window:
        return self.windows[-1]

    async def one(self, op: str) -> None:
        channel = self.fixture.channel
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        client_id, secret = self.fixture.client
        if op == "issue":
            await self.fixture.issue(client_id, secret, "recipes:read")
        elif op == "check":
            answer = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(self.client_token), timeout=5
            )
            if answer.status.code != code_pb2.OK:
                raise RuntimeError(f"valid token denied: {answer.status.code}")
        elif op == "introspect":
            request = token_pb.IntrospectTokenRequest(token=self.client_token)
            answer = await tokens.IntrospectToken(
                request, metadata=bearer(self.fixture.admin_token), timeout=5
            )
            if not answer.active:
                raise RuntimeError("valid token inactive")
        elif op == "revoke":
            token = await self.fixture.issue(client_id, secret, "recipes:read")
            await tokens.RevokeToken(
                token_pb.RevokeTokenRequest(token=token, client_id=client_id, client_secret=secret),
                timeout=5,
            )
            # Acknowledged: it must never be accepted again.
            answer = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(token), timeout=5
            )
            self.revocations_checked += 1
            if answer.status.code == code_pb2.OK:
                self.revoked_accepted += 1
        else:
            stub = cache_service_pb2_grpc.CacheServiceStub(channel)
            key = f"soak-{secrets.randbelow(1000)}"
            metadata = bearer(self.client_token)
            if op == "cache_set":
                await stub.SetValue(
                    cache_pb.SetValueRequest(namespace="bench", key=key, value=b"v" * 100),
                    metadata=metadata,
                    timeout=5,
                )
            else:
                await stub.GetValue(
                    cache_pb.GetValueRequest(namespace="bench", key=key),
                    metadata=metadata,
                    timeout=5,
                )

    async def worker(self) -> None:
        while not self.stop:
            op = secrets.choice(OPS)
            started = time.perf_counter()
            window = self.window
            try:
                await self.one(op)
            except grpc.aio.AioRpcError as error:
                window.errors[error.code().name] += 1
            except RuntimeError as error:
                window.errors[str(error)] += 1
            window.calls[op] += 1
            window.latencies.append((time.perf_counter() - started) * 1000)


def _failover(topology: SentinelTopology, kind: str) -> dict[str, Any]:
    started = time.monotonic()
    if kind == "kill -9":
        old = topology.kill_master()
        topology.wait_for_new_master(old.address, timeout=30)
        promoted = time.monotonic() - started
        topology.restart_as_replica(old, timeout=30)
    else:
        topology.paused_switchover(timeout=30)
        promoted = time.monotonic() - started
    return {"kind": kind, "promoted_after_s": round(promoted, 2), "at": time.time()}


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def _run(server: Server, topology: SentinelTopology) -> dict[str, Any]:
    seconds = _env_float("SOAK_SECONDS", 600)
    every = _env_float("SOAK_FAILOVER_EVERY", 120)
    interval = _env_float("SOAK_INTERVAL", 10)
    concurrency = int(_env_float("SOAK_CONCURRENCY", 16))
    async with grpc.aio.insecure_channel(server.target) as channel:
        fixture = Fixture(channel, ADMIN_CLIENT_ID, ADMIN_SECRET)
        await fixture.setup()
        soak = Soak(fixture, await fixture.issue(*fixture.client, " ".join(BENCH_SCOPES)))
        soak.windows.append(Window(time.monotonic()))
        rows: list[dict[str, Any]] = []
        begin = time.monotonic()
        workers = [asyncio.create_task(soak.worker()) for _ in range(concurrency)]
        failover_task: asyncio.Task[dict[str, Any]] | None = None
        next_failover = begin + every
        kinds = ["kill -9", "graceful"]
        rss_start = sample(server.pid).rss_bytes
        while time.monotonic() - begin < seconds:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if failover_task is None and now >= next_failover and now - begin < seconds - 5:
                kind = kinds[len(soak.failovers) % 2]
                failover_task = asyncio.create_task(asyncio.to_thread(_failover, topology, kind))
                next_failover += every
            if failover_task is not None and failover_task.done():
                soak.failovers.append(failover_task.result())
                failover_task = None
            window = soak.window
            soak.windows.append(Window(now))
            rows.append(
                {
                    "t_s": round(now - begin),
                    "calls": sum(window.calls.values()),
                    "errors": dict(window.errors),
                    "p99_ms": round(_p99(window.latencies), 2),
                    "rss_mib": round(sample(server.pid).rss_bytes / 2**20, 1),
                    "failing_over": failover_task is not None,
                }
            )
            row = rows[-1]
            print(
                f"{row['t_s']:>6}{row['calls']:>8}{sum(window.errors.values()):>8}"
                f"{row['p99_ms']:>10.1f}{row['rss_mib']:>9.1f}  {row['errors'] or ''}"
                f"{'  (failover in progress)' if row['failing_over'] else ''}",
                flush=True,
            )
        soak.stop = True
        await asyncio.gather(*workers)
        if failover_task is not None:
            soak.failovers.append(await failover_task)
    errors = Counter[str]()
    for row in rows:
        errors.update(row["errors"])
    calls = sum(row["calls"] for row in rows)
    unexpected = {code: n for code, n in errors.items() if code != "UNAVAILABLE"}
    server_alive = server.process is not None and server.process.poll() is None
    all_latencies = [value for window in soak.windows for value in window.latencies]
    return {
        "seconds": seconds,
        "failover_every_s": every,
        "concurrency": concurrency,
        "calls": calls,
        "errors": dict(errors),
        "unexpected_errors": unexpected,
        "p99_ms": round(_p99(all_latencies), 2),
        "rss_mib_start": round(rss_start / 2**20, 1),
        "rss_mib_end": rows[-1]["rss_mib"] if rows else None,
        "failovers": soak.failovers,
        "revocations_checked": soak.revocations_checked,
        "revoked_tokens_accepted": soak.revoked_accepted,
        "server_restarted": not server_alive,
        "rows": rows,
        "pass": not unexpected and soak.revoked_accepted == 0 and server_alive,
    }


class _SentinelRedis:
    url = ""  # bench.stack.Server reads .url; the sentinel settings replace it below


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        topology = SentinelTopology(Path(tmp) / "redis")
        topology.start()
        server = Server(
            Path(tmp),
            _SentinelRedis(),  # type: ignore[arg-type]
            env={
                "TOKENSERVICE_REDIS__SENTINELS": json.dumps(topology.sentinel_addresses),
                "TOKENSERVICE_REDIS__MASTER_NAME": topology.master_name,
                "TOKENSERVICE_REDIS__DURABILITY": "replicated",
            },
        )
        server.env.pop("TOKENSERVICE_REDIS__URL")
        try:
            server.init()
            server.start()
            print(f"{'t (s)':>6}{'calls':>8}{'errors':>8}{'p99 ms':>10}{'RSS MiB':>9}")
            result = asyncio.run(_run(server, topology))
        finally:
            server.stop()
            topology.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {key: value for key, value in result.items() if key != "rows"}
    print(json.dumps(summary, indent=2))
    print("PASS" if result["pass"] else "FAIL")
    raise SystemExit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
