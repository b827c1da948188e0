"""The bench's interleaved window: its ABBA schedule and the arithmetic of its ratios."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.load import Job, _interleaved, abba, interleaved_figures, segment_count


def test_segments_alternate_in_abba_order() -> None:
    order = "".join("B" if is_base else "S" for is_base in abba(12))
    assert order == "BSSBBSSBBSSB"


def test_every_adjacent_pair_holds_one_of_each_kind() -> None:
    kinds = abba(16)
    assert all(kinds[i] != kinds[i + 1] for i in range(0, 16, 2))


def test_the_window_is_rounded_to_whole_abba_blocks() -> None:
    assert segment_count(6.0, 0.75) == 8
    assert segment_count(4.0, 0.75) == 4  # 5.3 segments: one block
    assert segment_count(0.5, 0.75) == 4  # one block at least
    assert segment_count(9.0, 0.75) == 12


def test_a_linear_drift_cancels_in_the_sum_ratio() -> None:
    # the machine slows down by 1% of its speed per segment; the scenario runs at 0.8 of
    # the baseline's speed throughout
    speed = [1000 * (1 - 0.01 * i) for i in range(8)]
    counts = [round(v if is_base else 0.8 * v) for v, is_base in zip(speed, abba(8), strict=True)]
    figures = interleaved_figures(counts, 0.5)
    assert figures["ratio"] == pytest.approx(0.8, abs=0.001)
    # each pair alone is off by the drift across it, in opposite directions for B-S and S-B
    low, high = figures["pair_min"], figures["pair_max"]
    assert low < 0.8 < high
    assert figures["pair_ratios"][0] < 0.8 < figures["pair_ratios"][1]


def test_rates_and_pairs_from_counts() -> None:
    figures = interleaved_figures([100, 80, 90, 120, 100, 70, 60, 100], 0.5)
    assert figures["order"] == "BSSBBSSB"
    assert figures["baseline_rps"] == pytest.approx(420 / 2.0)
    assert figures["scenario_rps"] == pytest.approx(300 / 2.0)
    assert figures["ratio"] == pytest.approx(300 / 420)
    assert figures["pair_ratios"] == pytest.approx([0.8, 0.75, 0.7, 0.6])
    assert figures["pair_min"] == pytest.approx(0.6)
    assert figures["pair_max"] == pytest.approx(0.8)


def test_a_pair_without_baseline_calls_has_no_ratio() -> None:
    figures = interleaved_figures([0, 10, 10, 20], 0.5)
    assert figures["pair_ratios"] == [None, 0.5]
    assert figures["pair_min"] == figures["pair_max"] == 0.5
    assert interleaved_figures([0, 0, 0, 0], 0.5)["ratio"] is None


async def test_a_segment_counts_only_its_own_kind_after_it_settled() -> None:
    made: list[str] = []

    async def base() -> None:
        made.append("B")
        await asyncio.sleep(0.005)

    async def own() -> None:  # longer than a segment: lands in the next one
        made.append("S")
        await asyncio.sleep(0.15)

    job = Job(
        "scenario", {}, "-", 0, 1, time.time(), 0.1, 0.4, concurrency=3,
        alternate="baseline", segment=0.1, settle=0.02,
    )  # fmt: skip
    out = await _interleaved(job, base, own, time.perf_counter() + job.warmup)
    assert abba(4) == [True, False, False, True]  # B S S B
    b0, s1, s2, _ = out["segments"]
    # S calls started in segment 1 end in segment 2 (also S): counted there, not in 1
    assert s1 == 0
    assert s2 > 0
    # B calls of 5 ms over segment 0's last 80 ms, 3 at a time: 48 at most
    assert 0 < b0 <= 3 * 80 // 5
    assert "S" in made
    assert out["errors"] == 0
