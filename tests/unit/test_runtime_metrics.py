"""The process and garbage-collector metrics (runtime_metrics) and the heap freeze at start."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tokenservice_server.app import settle_heap
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.runtime_metrics import (
    CollectorPauses,
    process_pauses,
    register_runtime_metrics,
)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _pause(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], suffix: str, **labels: str
) -> float:
    return samples[(f"tokenservice_gc_pause_seconds{suffix}", tuple(sorted(labels.items())))]


def test_pauses_land_in_cumulative_buckets_by_generation() -> None:
    pauses = CollectorPauses()
    pauses.record("0", 0.00005)
    pauses.record("0", 0.0003)
    pauses.record("2", 0.055)
    pauses.record("2", 3.0)  # past the last bound: +Inf only
    counts, total = pauses.snapshot()["2"]
    assert sum(counts) == 2
    assert total == pytest.approx(3.055)
    assert pauses.snapshot()["1"] == ([0] * len(counts), 0.0)


def test_the_exposition_is_a_histogram_per_generation() -> None:
    registry = CollectorRegistry()
    register_runtime_metrics(registry)
    before = _samples(registry)
    pauses = process_pauses()
    pauses.record("2", 0.055)
    pauses.record("2", 0.0003)
    after = _samples(registry)

    def moved(suffix: str, **labels: str) -> float:
        return _pause(after, suffix, **labels) - _pause(before, suffix, **labels)

    assert moved("_count", generation="2") == 2
    assert moved("_sum", generation="2") == pytest.approx(0.0553)
    assert moved("_bucket", generation="2", le="0.0005") == 1  # cumulative: 0.0003 only
    assert moved("_bucket", generation="2", le="0.05") == 1
    assert moved("_bucket", generation="2", le="0.1") == 2
    assert moved("_bucket", generation="2", le="+Inf") == 2
    for generation in "01":  # exported for every generation, collected or not
        assert ("tokenservice_gc_pause_seconds_count", (("generation", generation),)) in after


def test_a_real_collection_is_timed_once_hooked() -> None:
    registry = CollectorRegistry()
    register_runtime_metrics(registry)
    before = _samples(registry)
    gc.collect()
    after = _samples(registry)
    count = ("tokenservice_gc_pause_seconds_count", (("generation", "2"),))
    assert after[count] - before[count] >= 1
    assert gc.callbacks.count(process_pauses()) == 1  # hooked once, however many registries


def test_the_server_registry_exports_process_and_gc_series() -> None:
    samples = _samples(ServerMetrics().registry)
    names = {name for name, _ in samples}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
        "tokenservice_gc_pause_seconds_bucket",
        "tokenservice_gc_frozen_objects",
    ):
        assert name in names, name
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_settle_heap_freezes_what_is_alive_and_the_gauge_says_so() -> None:
    registry = CollectorRegistry()
    register_runtime_metrics(registry)
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # this test process's modules and objects
        assert _samples(registry)[("tokenservice_gc_frozen_objects", ())] == frozen
    finally:
        gc.unfreeze()
    assert _samples(registry)[("tokenservice_gc_frozen_objects", ())] == 0
