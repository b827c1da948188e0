"""The lean counters and histograms export exactly what prometheus_client's would for the
same definitions and updates, so a dashboard cannot tell them apart."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tokenservice_server.lean_metrics import LeanCounter, LeanHistogram
from tokenservice_server.metrics import ServerMetrics

BUCKETS = (0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0, 10.0)
# Below, at and between the bounds, past the last one, and exactly on +Inf's neighbours.
OBSERVATIONS = (0.0, 0.0004, 0.0005, 0.0007, 0.001, 0.002, 0.05, 0.1, 3.0, 10.0, 11.0, 1e9)


def _exposition(counter_type: type, histogram_type: type) -> str:
    registry = CollectorRegistry(auto_describe=True)
    requests = counter_type(
        "demo_requests_total", "Requests.", ("method", "code"), registry=registry
    )
    failovers = counter_type("demo_failovers_total", "Failovers.", registry=registry)
    latency = histogram_type(
        "demo_latency_seconds", "Latency.", ("method",), buckets=BUCKETS, registry=registry
    )
    plain = histogram_type("demo_probe_seconds", "Probe.", buckets=BUCKETS, registry=registry)
    requests.labels(method="Check", code="OK").inc()
    requests.labels("Check", "OK").inc(2)
    requests.labels(method="Get", code="NOT_FOUND").inc(0.5)
    requests.labels(code="OK", method="Issue")  # made, never incremented: exported at 0
    failovers.inc()
    for value in OBSERVATIONS:
        latency.labels(method="Check").observe(value)
        plain.observe(value / 2)
    latency.labels("Get").observe(0.003)
    return generate_latest(registry).decode()


def test_the_exposition_is_prometheus_clients() -> None:
    lean = _exposition(LeanCounter, LeanHistogram)
    reference = _exposition(Counter, Histogram)
    # The created series are disabled for every metric (metrics.py); compare without them.
    reference = "\n".join(line for line in reference.splitlines() if "_created" not in line)
    assert lean.splitlines() == reference.splitlines()


def test_the_server_registry_has_no_duplicate_and_exports_its_families() -> None:
    metrics = ServerMetrics()
    metrics.handling_seconds.labels("unary", "svc", "Method").observe(0.002)
    text = generate_latest(metrics.registry).decode()
    labels = 'grpc_method="Method",grpc_service="svc",grpc_type="unary"'
    assert f'grpc_server_handling_seconds_bucket{{{labels},le="0.0025"}} 1.0' in text
    assert "tokenservice_redis_failovers_total 0.0" in text


def test_wrong_labels_and_negative_increments_are_refused() -> None:
    counter = LeanCounter("demo_total", "Demo.", ("a", "b"))
    with pytest.raises(ValueError, match="label names"):
        counter.labels(a="1", c="2")
    with pytest.raises(ValueError, match="label count"):
        counter.labels("1")
    with pytest.raises(ValueError, match="has labels"):
        counter.inc()
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("1", "2").inc(-1)


def test_a_scrape_while_children_are_being_made_does_not_fail() -> None:
    registry = CollectorRegistry(auto_describe=True)
    counter = LeanCounter("busy_total", "Busy.", ("key",), registry=registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(registry)
        except BaseException as error:
            errors.append(error)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for index in range(20_000):
            counter.labels(str(index)).inc()
    finally:
        stop.set()
        scraper.join()
    assert errors == []
    assert 'busy_total{key="19999"} 1.0' in generate_latest(registry).decode()
