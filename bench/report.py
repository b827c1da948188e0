"""The table: every figure, its ratio to the baseline of the same run, and the target.

A scenario with a throughput target is also measured interleaved with the baseline on the
same server process ('inter'): the load alternates between the two calls in B S S B ...
segments and the ratio is the scenario's calls over the baseline's in that one window.
The target's verdict uses it, because this machine's speed drifts by 10-35% within
minutes, too much for two windows run one after the other; 'pairs' is the lowest and
highest ratio of the window's adjacent B/S pairs (its spread)."""

from __future__ import annotations

from typing import Any

from bench.scenarios import SCENARIOS


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "NOT met")


def _phases(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's windows: closed loop, open loops and the interleaved one if any."""
    phases = [entry["closed"], *entry["open"].values()]
    if "interleaved" in entry:
        phases.append(entry["interleaved"])
    return phases


def _first_error(entry: dict[str, Any]) -> str:
    for phase in _phases(entry):
        if phase["error_sample"]:
            return str(phase["error_sample"][0])
    return "?"


def print_table(results: dict[str, Any]) -> None:
    scenarios = results["scenarios"]
    start, end = scenarios["baseline"]["closed"], scenarios["baseline_end"]["closed"]
    base = (start["throughput"] + end["throughput"]) / 2
    base_cpu = (start["cpu_ms_per_1000"] + end["cpu_ms_per_1000"]) / 2
    base_p50 = {k: scenarios["baseline"]["open"][k]["p50"] for k in scenarios["baseline"]["open"]}
    print(
        f"\nbaseline (Health/Check): {start['throughput']:.0f} rps at start, "
        f"{end['throughput']:.0f} at end; 'ratio' uses the mean {base:.0f}; 'inter' (the "
        "target's verdict) is the scenario over the baseline alternating with it in "
        "B S S B segments on its server, 'pairs' the range of the adjacent B/S pairs' ratios"
    )
    header = (
        f"{'scenario':<14}{'rps':>7}{'ratio':>7}{'inter':>7}{'pairs':>11}{'target':>8}{'':>9}"
        f"{'RTT/rpc':>8}{'':>9}{'cpu ms/1k':>10}{'ratio':>6}"
        f"   p50/p90/p99 ms at 25% | 50% | 75% of its peak (p50 ratio at 50%)"
    )
    print(header)
    print("-" * len(header))
    for name, entry in scenarios.items():
        closed = entry["closed"]
        target = SCENARIOS[name.removesuffix("_end")].target
        ratio = closed["throughput"] / base if base else None
        inter = entry.get("interleaved", {})
        inter_ratio = inter.get("ratio")
        pairs = (
            f"{inter['pair_min']:.2f}-{inter['pair_max']:.2f}"
            if inter.get("pair_min") is not None
            else ""
        )
        ratio_ok = (
            None if target.ratio is None or inter_ratio is None else inter_ratio >= target.ratio
        )
        trips = closed["round_trips_per_rpc"]
        trips_ok = (
            None
            if target.round_trips is None or trips is None
            else abs(trips - target.round_trips) < 0.05
        )
        cpu = closed["cpu_ms_per_1000"]
        lat = " | ".join(
            f"{_fmt(o['p50'])}/{_fmt(o['p90'])}/{_fmt(o['p99'])}" for o in entry["open"].values()
        )
        mid = entry["open"].get("50%", {}).get("p50")
        p50_ratio = mid / base_p50["50%"] if mid and base_p50.get("50%") else None
        errors = sum(phase["errors"] for phase in _phases(entry))
        print(
            f"{name:<14}{closed['throughput']:>7.0f}{_fmt(ratio):>7}"
            f"{_fmt(inter_ratio) if inter_ratio else '':>7}{pairs:>11}"
            f"{_fmt(target.ratio, '>=.2f') if target.ratio else '':>8}{_verdict(ratio_ok):>9}"
            f"{_fmt(trips):>8}{_verdict(trips_ok):>9}{_fmt(cpu, '.0f'):>10}"
            f"{_fmt(cpu / base_cpu if cpu else None):>6}   {lat} ({_fmt(p50_ratio)})"
            + (f"  ERRORS {errors}: {_first_error(entry)}" if errors else "")
        )
    interleaved = {n: e["interleaved"] for n, e in scenarios.items() if "interleaved" in e}
    if interleaved:
        first = next(iter(interleaved.values()))
        print(
            f"\ninterleaved windows ({first['order']}, {first['segment']:g} s segments): "
            "rps of the baseline / the scenario, ratio of each B/S pair"
        )
        for name, inter in interleaved.items():
            print(
                f"  {name:<18}{inter['baseline_rps']:>6.0f} /{inter['scenario_rps']:>6.0f}   "
                + " ".join(_fmt(r) for r in inter["pair_ratios"])
            )
    check = results.get("interleaved_self_check")
    if check and check.get("ratio") is not None:
        print(
            f"  self-check: the baseline against itself reads {check['ratio']:.2f} (pairs "
            f"{' '.join(_fmt(r) for r in check['pair_ratios'])}): the error band of 'inter'"
        )
    rss0, rss1 = results.get("server_rss_start"), results.get("server_rss_end")
    if rss0 and rss1:
        print(f"\nserver RSS: {rss0 / 2**20:.1f} MiB at start, {rss1 / 2**20:.1f} MiB at end")
    memory = results.get("memory")
    if memory and memory["bytes_per_token"]:
        ok = memory["bytes_per_token"] <= memory["target_bytes"]
        indexes = ", ".join(
            f"{name} {size:.0f} B"
            for name, size in (memory.get("index_growth_per_token") or {}).items()
            if abs(size) >= 1
        )
        print(
            f"Redis memory per live access token (MEMORY USAGE of the token records and "
            f"their indexes over the {memory.get('live_tokens', '?')} live tokens, after "
            f"issuing {memory['tokens']}): {memory['bytes_per_token']:.0f} B (target <= "
            f"{memory['target_bytes']}: {_verdict(ok)}); the batch's own growth per token "
            f"{_fmt(memory.get('marginal_bytes_per_token'), '.0f')} B: the token key "
            f"{_fmt(memory['memory_usage_token_key_mean'], '.0f')} B, {indexes}; "
            f"used_memory delta {_fmt(memory.get('used_memory_per_token'), '.0f')} B"
        )
    edge = results.get("edge")
    if edge:
        plain, authz = edge["envoy_plain"], edge["envoy_ext_authz"]
        print(
            f"Envoy ({authz['tool']}): without ext_authz {plain['throughput']:.0f} rps "
            f"p50/p90/p99 {_fmt(plain.get('p50'))}/{_fmt(plain.get('p90'))}/"
            f"{_fmt(plain.get('p99'))} ms; with ext_authz {authz['throughput']:.0f} rps "
            f"({authz['throughput'] / plain['throughput']:.2f} of plain, "
            f"{authz['throughput'] / base:.2f} of the gRPC baseline) p50/p90/p99 "
            f"{_fmt(authz.get('p50'))}/{_fmt(authz.get('p90'))}/{_fmt(authz.get('p99'))} ms"
            f"; errors {plain['errors']}/{authz['errors']}"
        )
    for key, label in (("propagation", "no cache"), ("propagation_cached", "hot-token cache")):
        prop = results.get(key)
        if prop and "error" in prop:
            print(f"revoke on server A -> denied by server B ({label}): FAILED {prop['error']}")
        elif prop:
            ok = prop["max_ms"] <= prop["target_ms"]
            print(
                f"revoke on server A -> denied by server B ({label}): p50 {prop['p50_ms']:.1f} "
                f"ms, max {prop['max_ms']:.1f} ms over {prop['trials']} (target <= "
                f"{prop['target_ms']} ms: {_verdict(ok)})"
            )
    soak = results.get("soak")
    if soak:
        ok = soak["rss_growth"] < soak["target_growth"]
        short = (
            "" if soak["seconds"] >= 300 else " (SHORT run; target is 300 s: make bench-soak-rss)"
        )
        print(
            f"RSS soak, Check at {soak['offered']:.0f} rps offered ({soak['achieved']:.0f} "
            f"achieved) for {soak['seconds']:.0f} s: {soak['rss_start'] / 2**20:.1f} -> "
            f"{soak['rss_end'] / 2**20:.1f} MiB, growth {soak['rss_growth'] * 100:+.1f}% "
            f"(target < 10%: {_verdict(ok)}){short}; p99 {_fmt(soak['p99'])} ms"
        )
