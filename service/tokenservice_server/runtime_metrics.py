"""The process's own figures: memory, CPU, file descriptors and the garbage collector.

``process_*`` (resident memory, CPU seconds, open file descriptors, start time) and
``python_gc_*`` / ``python_info`` are prometheus_client's standard collectors, the names
every Python dashboard already reads. Added here:

* ``tokenservice_gc_pause_seconds{generation}``: how long each cyclic collection stopped
  the process (the event loop with it: every RPC in flight waits). Measured by a
  ``gc.callbacks`` hook: under load a server makes about ten collections a second, almost
  all of generation 0, so the hook costs nothing measurable.
* ``tokenservice_gc_frozen_objects``: the objects ``serve`` moved out of the collector's
  sight at start (:func:`tokenservice_server.app.settle_heap`); 0 if it did not.

The pauses are one record per process (``gc.callbacks`` is process-wide), whichever
server's registry exports them.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CollectorPauses", "register_runtime_metrics"]

#: Upper bounds (seconds): a young collection takes ~0.1 ms, a full one of an unfrozen
#: heap 50-60 ms on the bench machine (docs/performance.md, eighth pass).
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_LE = [floatToGoString(bound) for bound in (*PAUSE_BUCKETS, math.inf)]  # type: ignore[no-untyped-call]
_GENERATIONS = ("0", "1", "2")


class CollectorPauses:
    """Durations of the cyclic garbage collector's runs, by generation, as a histogram.

    A collection runs on whichever thread allocated last (the event loop's, grpc's, the
    metrics server's), so the counts are kept under a lock; collections cannot nest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = 0.0
        self._counts = {generation: [0] * (len(PAUSE_BUCKETS) + 1) for generation in _GENERATIONS}
        self._sums = dict.fromkeys(_GENERATIONS, 0.0)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.record(str(info["generation"]), time.perf_counter() - self._started)

    def record(self, generation: str, seconds: float) -> None:
        with self._lock:
            self._counts[generation][bisect_left(PAUSE_BUCKETS, seconds)] += 1
            self._sums[generation] += seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """Per generation: the count in each bucket (the last is +Inf) and the sum."""
        with self._lock:
            return {
                generation: (list(self._counts[generation]), self._sums[generation])
                for generation in _GENERATIONS
            }


_pauses = CollectorPauses()
_installed = threading.Lock()


def process_pauses() -> CollectorPauses:
    """This process's record, hooked into ``gc.callbacks`` on first use."""
    with _installed:
        if _pauses not in gc.callbacks:
            gc.callbacks.append(_pauses)
    return _pauses


class _RuntimeCollector(Collector):
    def __init__(self, pauses: CollectorPauses) -> None:
        self._pauses = pauses

    def describe(self) -> Iterable[Metric]:
        return [self._pause_family(), self._frozen_family()]

    def collect(self) -> Iterable[Metric]:
        pauses = self._pause_family()
        for generation, (counts, total) in self._pauses.snapshot().items():
            cumulative = 0
            buckets = []
            for le, count in zip(_LE, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            pauses.add_metric([generation], buckets, total)
        frozen = self._frozen_family()
        frozen.add_metric([], gc.get_freeze_count())
        return [pauses, frozen]

    @staticmethod
    def _pause_family() -> HistogramMetricFamily:
        return HistogramMetricFamily(
            "tokenservice_gc_pause_seconds",
            "Cyclic garbage collections by generation: how long each stopped the process",
            labels=["generation"],
        )

    @staticmethod
    def _frozen_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tokenservice_gc_frozen_objects",
            "Objects moved out of the garbage collector's sight once the server was up",
        )


def register_runtime_metrics(registry: CollectorRegistry) -> None:
    """The process, platform, garbage-collector and pause metrics, on ``registry``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_RuntimeCollector(process_pauses()))
