"""Orchestration: start the stack, run every scenario, print the table, write the JSON.

A scenario with a throughput target gets, besides its own windows, an interleaved window
(Bench.interleaved): the load processes alternate between the baseline's call and the
scenario's in ABBA segments on one channel and server process, and the ratio of the two
sums is the target's verdict (the machine's speed drifts too much for two separate
windows to compare)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import http_load, stack
from bench.load import Job, LoadPool, interleaved_figures, segment_count
from bench.procstat import sample
from bench.report import print_table
from bench.scenarios import HAS_TOKEN_CACHE, SCENARIOS, Fixture, check_request
from bench.stack import ADMIN_CLIENT_ID, ADMIN_SECRET, ROOT, Envoy, Server, Valkey

RESULTS = ROOT / "bench" / "results"
ORDER = [
    "baseline",
    "check_valid",
    "check_hot",
    "check_cached",
    "check_invalid",
    "introspect",
    "introspect_cached",
    "issue_cc",
    "cache_get",
    "cache_set",
    "revoke",
]

#: Extra servers a scenario may name (``Scenario.server``), started on the same Valkey
#: with these TOKENSERVICE_* overrides (e.g. the hot-token cache switched on or off).
SERVERS: dict[str, dict[str, str]] = {
    "main": {},  # the product's defaults (the hot-token cache is on)
    "cached": {"TOKENSERVICE_TOKEN_CACHE__ENABLED": "true"},
    # The Redis path of Check and IntrospectToken: every lookup a round trip.
    "uncached": {"TOKENSERVICE_TOKEN_CACHE__ENABLED": "false"},
}


@dataclass
class Settings:
    workers: int = 2
    concurrency: int = 25  # per load process
    closed_seconds: float = 4.0
    #: the closed-loop window of a scenario measured interleaved (its verdict comes from
    #: the interleaved window; this one gives its peak, CPU, round trips and latency loads)
    targeted_seconds: float = 3.0
    open_seconds: float = 2.0
    warmup: float = 0.7
    loads: tuple[float, ...] = (0.25, 0.50, 0.75)
    memory_tokens: int = 20_000
    #: the interleaved window (baseline and scenario alternating) of each scenario with a
    #: throughput target; rounded to whole B S S B blocks of ``segment_seconds`` (0: none)
    interleaved_seconds: float = 10.0
    segment_seconds: float = 0.5
    #: the start of each segment not counted: the previous kind's calls drain (at 50 in
    #: flight and a few thousand calls a second, a call takes 10-20 ms)
    settle_seconds: float = 0.1
    soak_seconds: float = 20.0
    soak_load: float = 0.70
    only: list[str] = field(default_factory=list)
    #: the servers on CPU 0, Valkey, Envoy and the load generators on the others
    pin: bool = True
    envoy: bool = True


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.valkey = Valkey(workdir)
        self.servers: dict[str, Server] = {}
        self.pool: LoadPool | None = None
        self.data: dict[str, dict[str, Any]] = {}
        self.results: dict[str, Any] = {"scenarios": {}}

    # -- the stack ----------------------------------------------------------------------

    def start(self) -> None:
        stack.place(self.settings.pin)
        self.valkey.start()
        main = Server(self.workdir, self.valkey, name="main", env=SERVERS["main"])
        main.init()
        main.start()
        self.servers["main"] = main
        self.pool = LoadPool(self.settings.workers, stack.OTHER_CPUS)

    def server(self, name: str, env: dict[str, str] | None = None) -> Server:
        """The named server, started on first use (``SERVERS`` holds their settings)."""
        if name not in self.servers:
            server = Server(self.workdir, self.valkey, name=name, env=env or SERVERS.get(name, {}))
            server.start()
            self.servers[name] = server
        return self.servers[name]

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
        for server in self.servers.values():
            server.stop()
        self.valkey.stop()

    async def fixture(self, server: Server) -> tuple[Fixture, grpc.aio.Channel]:
        channel = grpc.aio.insecure_channel(server.target)
        fixture = Fixture(channel, ADMIN_CLIENT_ID, ADMIN_SECRET)
        await fixture.setup()
        return fixture, channel

    def prepare(self, names: list[str]) -> None:
        async def prepare_all() -> None:
            fixture, channel = await self.fixture(self.servers["main"])
            self.data["_"] = {"client_id": fixture.client[0], "secret": fixture.client[1]}
            self.data["_"]["token"] = await fixture.client_token()
            for name in names:
                prepare = SCENARIOS[name].prepare
                own = SCENARIOS[name].server
                if own == "main" or not prepare:
                    self.data[name] = await prepare(fixture) if prepare else {}
                    continue
                try:
                    other, other_channel = await self.fixture(self.server(own))
                except Exception as exc:
                    print(f"  skipping {name}: server {own!r} did not start: {exc}")
                    skipped.append(name)
                    continue
                self.data[name] = await prepare(other)
                await other_channel.close()
            await channel.close()

        skipped: list[str] = []
        asyncio.run(prepare_all())
        for name in skipped:
            names.remove(name)

    # -- one phase of load ----------------------------------------------------------------

    def _jobs(
        self, name: str, server: Server, start: float, seconds: float, **load: Any
    ) -> list[Job]:
        """One job per load process: ``name``'s calls to ``server`` from ``start``, for
        ``seconds`` after the warmup, shaped by ``load`` (the other ``Job`` fields)."""
        return [
            Job(
                scenario=name,
                target=server.target,
                worker=index,
                workers=self.settings.workers,
                start=start,
                warmup=self.settings.warmup,
                duration=seconds,
                **load,
            )
            for index in range(self.settings.workers)
        ]

    def phase(
        self,
        name: str,
        *,
        concurrency: int = 0,
        rate: float = 0.0,
        seconds: float,
        max_calls: int = 0,
        keep_results: bool = False,
        data: dict[str, Any] | None = None,
        on: str | None = None,
    ) -> dict[str, Any]:
        """One window of load of scenario ``name`` (on its own server, or on ``on``)."""
        assert self.pool is not None
        server = self.server(on or SCENARIOS[name].server)
        workers = self.settings.workers
        start = time.time() + 0.3
        warmup = self.settings.warmup
        jobs = self._jobs(
            name,
            server,
            start,
            seconds,
            data=self.data[name] if data is None else data,
            concurrency=concurrency,
            rate=rate / workers,
            max_calls=max_calls // workers if max_calls else 0,
            keep_results=keep_results,
        )
        pending = self.pool.start(jobs)
        time.sleep(max(0.0, start + warmup - time.time()))
        before, trips_before = sample(server.pid), server.redis_round_trips()
        began = time.perf_counter()
        pending.wait(timeout=max(0.0, start + warmup + seconds - time.time()))
        after, trips_after = sample(server.pid), server.redis_round_trips()
        elapsed = time.perf_counter() - began
        outcomes = pending.get(timeout=120)
        latencies = sorted(x for outcome in outcomes for x in outcome["latencies"])
        calls = len(latencies)
        window = seconds if not max_calls else elapsed
        return {
            "calls": calls,
            "throughput": calls / window if window else 0.0,
            **percentiles(latencies),
            "errors": sum(o["errors"] for o in outcomes),
            "error_sample": [e for o in outcomes for e in o["error_sample"]][:3],
            "dropped": sum(o["dropped"] for o in outcomes),
            "round_trips_per_rpc": (trips_after - trips_before) / calls if calls else None,
            "cpu_ms_per_1000": (after.cpu_seconds - before.cpu_seconds) / calls * 1e6
            if calls
            else None,
            "server_cpu_util": (after.cpu_seconds - before.cpu_seconds) / elapsed,
            "rss_before": before.rss_bytes,
            "rss_after": after.rss_bytes,
            "results": [r for o in outcomes for r in o["results"]] if keep_results else [],
        }

    def interleaved(self, name: str) -> dict[str, Any]:
        """The baseline and scenario ``name`` alternating on its server, closed loop: each
        load process makes both calls on its one channel, in segments B S S B B S S B ...
        (``load.abba``) after the warmup; per segment the calls of its kind that complete
        inside it, after its first ``settle_seconds``, count. The verdict's ratio is
        sum(S) / sum(B) over the window (a linear drift of the machine's speed cancels);
        ``pair_ratios`` (each adjacent B/S pair) shows the spread."""
        assert self.pool is not None
        s = self.settings
        server = self.server(SCENARIOS[name].server)
        segments = segment_count(s.interleaved_seconds, s.segment_seconds)
        jobs = self._jobs(
            name,
            server,
            time.time() + 0.3,
            segments * s.segment_seconds,
            data=self.data[name],
            concurrency=s.concurrency,
            alternate="baseline",
            alternate_data=self.data["baseline"],
            segment=s.segment_seconds,
            settle=s.settle_seconds,
        )
        outcomes = self.pool.start(jobs).get(timeout=120 + segments * s.segment_seconds)
        counts = [sum(column) for column in zip(*(o["segments"] for o in outcomes), strict=True)]
        return {
            **interleaved_figures(counts, s.segment_seconds, s.settle_seconds),
            "seconds": segments * s.segment_seconds,
            "segment_errors": [
                sum(column) for column in zip(*(o["segment_errors"] for o in outcomes), strict=True)
            ],
            "errors": sum(o["errors"] for o in outcomes),
            "error_sample": [e for o in outcomes for e in o["error_sample"]][:3],
        }

    def scenario(self, name: str) -> dict[str, Any]:
        s = self.settings
        entry: dict[str, Any] = {"description": SCENARIOS[name].description}
        targeted = SCENARIOS[name].target.ratio is not None and s.interleaved_seconds > 0
        seconds = s.targeted_seconds if targeted else s.closed_seconds
        peak = self.phase(name, concurrency=s.concurrency, seconds=seconds)
        peak.pop("results")
        entry["closed"] = peak
        if targeted:
            # The baseline and the scenario alternating on the same server process: the
            # machine's speed drifts by 10-35% within minutes here, so the target's ratio
            # is taken between the two within one window. After the closed window, so
            # that the server (started on first use) is warm.
            entry["interleaved"] = self.interleaved(name)
        entry["open"] = {}
        for load in s.loads:
            rate = max(1.0, peak["throughput"] * load)
            result = self.phase(name, rate=rate, seconds=s.open_seconds)
            result.pop("results")
            result["offered"] = rate
            entry["open"][f"{round(load * 100)}%"] = result
        return entry

    # -- the special phases -------------------------------------------------------------

    def memory_per_token(self) -> tuple[dict[str, Any], list[str]]:
        """Issue N tokens; the figure (the issue 9 target's measure) is MEMORY USAGE
        (SAMPLES 0, every element counted) of every token record and of every index that
        grew with them (auth_token_cleanup, auth:client_tokens:*, ...), summed after the
        batch and divided by the live access tokens. The batch's own growth divided by N
        (the marginal cost) and used_memory's delta per token are reported alongside; the
        latter also counts the keyspace's own tables and allocator slack."""
        redis = self.valkey.client()
        count = self.settings.memory_tokens
        redis.memory_purge()
        before_keys = _memory_usage(redis)
        before = int(redis.info("memory")["used_memory"])
        result = self.phase(
            "issue_cc",
            concurrency=self.settings.concurrency,
            seconds=600,
            max_calls=count,
            keep_results=True,
            # the bench client's credentials, also when issue_cc itself is not run (--only)
            data=self.data.get("issue_cc", self.data["_"]),
        )
        after = int(redis.info("memory")["used_memory"])
        after_keys = _memory_usage(redis)
        tokens = [t for t in result["results"] if t]
        growth = {
            name: after_keys.get(name, 0) - before_keys.get(name, 0)
            for name in after_keys.keys() | before_keys.keys()
        }
        records = [n for n in growth if n.startswith(b"auth:access_token:") and growth[n] > 0]
        indexes = {
            n.decode(errors="replace"): size
            for n, size in growth.items()
            if size and not n.startswith(b"auth:access_token:")
        }
        # The same keys' whole size over every live token they hold: the growth of one
        # batch also depends on where each index's hash table is in its doubling cycle (a
        # bucket array doubles at 2^n entries: 8 bytes per entry at once), so the marginal
        # figure swings by 50-100 B between runs; the average over the table is the
        # memory a live token actually costs.
        live = sum(1 for n in after_keys if n.startswith(b"auth:access_token:"))
        held = sum(
            size
            for n, size in after_keys.items()
            if n.startswith(b"auth:access_token:") or growth.get(n, 0) > 0
        )
        figures = {
            "tokens": len(tokens),
            "memory_usage_delta": sum(growth.values()),
            "marginal_bytes_per_token": sum(growth.values()) / len(tokens) if tokens else None,
            "live_tokens": live,
            "bytes_per_token": held / live if live else None,
            "used_memory_delta": after - before,
            "used_memory_per_token": (after - before) / len(tokens) if tokens else None,
            "memory_usage_token_key_mean": (
                statistics.fmean(growth[n] for n in records) if records else None
            ),
            "index_growth_per_token": {
                name: size / len(tokens) for name, size in sorted(indexes.items()) if tokens
            },
            "target_bytes": 400,
        }
        return figures, tokens

    def edge(self) -> dict[str, Any]:
        """Envoy with ext_authz vs the same Envoy without it (direct_response upstream)."""
        main = self.servers["main"]
        token = self.data["_"]["token"]
        out: dict[str, Any] = {}
        connections = self.settings.workers * self.settings.concurrency
        for authz in (False, True):
            envoy = Envoy(self.workdir, tokenservice_port=main.port, ext_authz=authz)
            envoy.start()
            try:
                before = sample(main.pid)
                if http_load.wrk_available():
                    http_load.run_wrk(envoy.port, token, connections=connections, seconds=1)
                    result = http_load.run_wrk(
                        envoy.port,
                        token,
                        connections=connections,
                        seconds=self.settings.closed_seconds,
                    )
                else:
                    assert self.pool is not None
                    per = connections // self.settings.workers
                    args = [
                        (envoy.port, token, per, self.settings.closed_seconds)
                    ] * self.settings.workers
                    outcomes = self.pool._pool.map(http_load.python_job, args)
                    latencies = sorted(x for o in outcomes for x in o["latencies"])
                    result = {
                        "tool": "python",
                        "throughput": len(latencies) / self.settings.closed_seconds,
                        "errors": sum(o["errors"] for o in outcomes),
                        **percentiles(latencies),
                    }
                after = sample(main.pid)
                result["server_cpu_seconds"] = after.cpu_seconds - before.cpu_seconds
            finally:
                envoy.stop()
            out["envoy_ext_authz" if authz else "envoy_plain"] = result
        return out

    def revoke_propagation(self, trials: int = 20, *, cached: bool = False) -> dict[str, Any]:
        """Two servers on one Valkey: revoke on A, then Check on B every millisecond until
        it denies; the figure is the time from A's answer to B's first denial.

        Without the hot-token cache every Check reads Redis, so this is ~one Check; with it,
        it is the invalidation delay (target: <= 100 ms on every replica)."""
        env = SERVERS["cached"] if cached else SERVERS["uncached"]
        a = self.server("cached") if cached else self.server("uncached")
        b = self.server("second", env)

        async def measure() -> list[float]:
            fixture, channel_a = await self.fixture(a)
            channel_b = grpc.aio.insecure_channel(b.target)
            from envoy.service.auth.v3 import external_auth_pb2_grpc
            from google.rpc import code_pb2

            from tokenservice.v1 import token_service_pb2 as pb

            check_b = external_auth_pb2_grpc.AuthorizationStub(channel_b).Check
            delays = []
            for _ in range(trials):
                token = await fixture.client_token()
                for _warm in range(3):  # warm B's cache, if it has one
                    assert (await check_b(check_request(token))).status.code == code_pb2.OK
                client_id, secret = fixture.client
                await fixture.tokens.RevokeToken(
                    pb.RevokeTokenRequest(token=token, client_id=client_id, client_secret=secret)
                )
                revoked = time.perf_counter()
                while (await check_b(check_request(token))).status.code == code_pb2.OK:
                    if time.perf_counter() - revoked > 5:
                        break
                    await asyncio.sleep(0.001)
                delays.append((time.perf_counter() - revoked) * 1000)
            await channel_a.close()
            await channel_b.close()
            return delays

        delays = sorted(asyncio.run(measure()))
        b.stop()
        del self.servers["second"]
        return {
            "trials": trials,
            "max_ms": delays[-1],
            "p50_ms": delays[len(delays) // 2],
            "target_ms": 100,
        }

    def soak(self, peak: float) -> dict[str, Any]:
        """Check (valid) at ``soak_load`` of its peak; RSS sampled every few seconds."""
        s = self.settings
        server = self.servers["main"]
        rate = peak * s.soak_load
        assert self.pool is not None
        start = time.time() + 0.3
        jobs = [
            Job("check_valid", self.data["check_valid"], server.target, i, s.workers, start,
                s.warmup, s.soak_seconds, rate=rate / s.workers)
            for i in range(s.workers)
        ]  # fmt: skip
        pending = self.pool.start(jobs)
        time.sleep(max(0.0, start + s.warmup - time.time()))
        samples = [(0.0, sample(server.pid).rss_bytes)]
        began = time.perf_counter()
        while not pending.ready():
            pending.wait(timeout=min(10.0, max(1.0, s.soak_seconds / 10)))
            samples.append((time.perf_counter() - began, sample(server.pid).rss_bytes))
        outcomes = pending.get()
        first, last = samples[0][1], samples[-1][1]
        latencies = sorted(x for o in outcomes for x in o["latencies"])
        return {
            "seconds": s.soak_seconds,
            "offered": rate,
            "achieved": len(latencies) / s.soak_seconds,
            **percentiles(latencies),
            "errors": sum(o["errors"] for o in outcomes),
            "rss_start": first,
            "rss_end": last,
            "rss_max": max(r for _, r in samples),
            "rss_growth": (last - first) / first,
            "target_growth": 0.10,
            "samples": samples,
        }


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 in milliseconds of sorted seconds."""
    if not latencies:
        return {"p50": None, "p90": None, "p99": None}
    last = len(latencies) - 1
    return {f"p{q}": latencies[min(last, round(q / 100 * last))] * 1000 for q in (50, 90, 99)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=25, help="calls in flight per process")
    parser.add_argument("--seconds", type=float, default=4.0, help="closed-loop window")
    parser.add_argument(
        "--targeted-seconds",
        type=float,
        default=3.0,
        help="closed-loop window of a scenario measured interleaved",
    )
    parser.add_argument("--open-seconds", type=float, default=2.0, help="each open-loop window")
    parser.add_argument(
        "--interleaved-seconds",
        type=float,
        default=10.0,
        help="window of baseline and scenario alternating, for each scenario with a "
        "throughput target (whole B S S B blocks; 0: none)",
    )
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=0.5,
        help="each segment of the interleaved window",
    )
    parser.add_argument("--memory-tokens", type=int, default=20_000)
    parser.add_argument(
        "--soak", type=float, default=20.0, help="seconds of the RSS soak (300 for the target)"
    )
    parser.add_argument(
        "--only", nargs="*", default=[], help=f"scenarios to run (of {', '.join(ORDER)})"
    )
    parser.add_argument("--no-envoy", action="store_true")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the kernel place every process (default: the servers on CPU 0, the rest "
        "on the other CPUs)",
    )
    parser.add_argument("--soak-only", action="store_true", help="baseline, Check and the soak")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings(
        workers=args.workers,
        concurrency=args.concurrency,
        closed_seconds=args.seconds,
        targeted_seconds=args.targeted_seconds,
        open_seconds=args.open_seconds,
        interleaved_seconds=args.interleaved_seconds,
        segment_seconds=args.segment_seconds,
        memory_tokens=args.memory_tokens,
        soak_seconds=args.soak,
        envoy=not args.no_envoy and not args.soak_only,
        pin=not args.no_pin,
    )
    names = [name for name in (args.only or ORDER) if name in SCENARIOS]
    if args.soak_only:
        names = ["baseline", "check_valid"]
    if "baseline" not in names:
        names = ["baseline", *names]
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="tokenservice-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        try:
            run(bench, names, args.soak_only)
        finally:
            bench.stop()
    bench.results["wall_seconds"] = time.time() - began
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%dT%H%M%S.json")
    path.write_text(json.dumps(bench.results, indent=2), encoding="utf-8")
    print_table(bench.results)
    print(f"\nJSON: {path.relative_to(ROOT)}  ({bench.results['wall_seconds']:.0f} s)")
    return 0


def _step(what: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {what}", flush=True)


def _memory_usage(redis: Any) -> dict[bytes, int]:
    """MEMORY USAGE (SAMPLES 0) of every key of the selected database."""
    names: list[bytes] = list(redis.scan_iter(count=1000))
    sizes: list[Any] = []
    for start in range(0, len(names), 1000):
        with redis.pipeline(transaction=False) as pipe:
            for name in names[start : start + 1000]:
                pipe.memory_usage(name, samples=0)
            sizes.extend(pipe.execute())
    return {name: int(size or 0) for name, size in zip(names, sizes, strict=True)}


def run(bench: Bench, names: list[str], soak_only: bool) -> None:
    results = bench.results
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": http_load.wrk_available(),
    }
    results["settings"] = bench.settings.__dict__
    _step("starting valkey and the server")
    bench.start()
    main_server = bench.servers["main"]
    results["server_rss_start"] = sample(main_server.pid).rss_bytes
    _step("preparing tokens and clients")
    prepared = [n for n in names if n != "revoke"]
    bench.prepare(prepared)
    names = [n for n in names if n in prepared or n == "revoke"]
    tokens: list[str] = []
    for name in names:
        if name == "revoke":
            _step("memory per live access token")
            results["memory"], tokens = bench.memory_per_token()
            bench.data["revoke"] = {**bench.data["_"], "tokens": tokens}
        _step(f"scenario {name}")
        results["scenarios"][name] = bench.scenario(name)
    _step("baseline again (drift)")
    results["scenarios"]["baseline_end"] = bench.scenario("baseline")
    if bench.settings.interleaved_seconds and not soak_only:
        # The interleaved window with the baseline on both sides: what it reads for two
        # identical calls (1.00 if the method and the machine were exact) is the error
        # band of every 'inter' verdict of this run.
        _step("interleaved self-check: the baseline against itself")
        results["interleaved_self_check"] = bench.interleaved("baseline")
    if "revoke" not in names and not soak_only and bench.settings.memory_tokens:
        _step("memory per live access token")
        results["memory"], _ = bench.memory_per_token()
    if bench.settings.envoy:
        _step("envoy with and without ext_authz")
        results["edge"] = bench.edge()
    if not soak_only:
        _step("revoke propagation across two servers")
        results["propagation"] = bench.revoke_propagation()
        if HAS_TOKEN_CACHE:
            _step("revoke propagation across two servers, hot-token cache on")
            try:
                results["propagation_cached"] = bench.revoke_propagation(cached=True)
            except Exception as exc:
                results["propagation_cached"] = {"error": f"{type(exc).__name__}: {exc}"}
    peak = (
        results["scenarios"]["check_valid"]["closed"]["throughput"] if "check_valid" in names else 0
    )
    if peak and bench.settings.soak_seconds:
        _step(f"RSS soak: check_valid at 70% of peak for {bench.settings.soak_seconds:.0f} s")
        results["soak"] = bench.soak(peak)
    results["server_rss_end"] = sample(main_server.pid).rss_bytes
    CUSTOM_RESULTS.update({name: fn(bench) for name, fn in CUSTOM.items()})
    results["custom"] = CUSTOM_RESULTS


#: Further measurements that are not "RPCs at a rate": name -> function of the Bench.
CUSTOM: dict[str, Callable[[Bench], Any]] = {}
CUSTOM_RESULTS: dict[str, Any] = {}
