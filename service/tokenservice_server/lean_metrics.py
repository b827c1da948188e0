"""Counters and histograms for the hot paths, exported as prometheus_client's would be.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` are written for any thread:
each checks the metric is observable, takes a lock per value and (for a histogram)
walks the buckets in Python. Measured with callgrind on a Check, one ``observe`` cost
10,300 instructions and one ``inc`` 6,000; a Redis-backed RPC makes four such updates.

Here a child is a plain value: ``inc`` adds to an attribute, ``observe`` bisects the
bucket bounds (C) and adds to one count. That relies on one rule: **children are updated
from the event loop's thread only** (every RPC, Redis command and health probe runs
there). Any thread may scrape: the registry's collection copies the children first
(``dict.copy()``, one C call under the GIL), and a scrape that races an update sees the
value before or after it.

The exposition is the same as prometheus_client's for the same definition (names, help,
label names, ``le`` bounds, ``_total``/``_bucket``/``_count``/``_sum``; no ``_created``
series, which ``metrics.py`` disables for the others too), so dashboards and alerts do
not notice which implementation a family uses.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["CounterChild", "HistogramChild", "LeanCounter", "LeanHistogram"]


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: the bucket prometheus_client's loop would pick.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


_C = TypeVar("_C", CounterChild, HistogramChild)


class _Family(Generic[_C]):
    """Children by label values, created on first use (as ``labels()`` does)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _C] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> _C:
        raise NotImplementedError

    def _key(self, values: tuple[str, ...], named: dict[str, str]) -> tuple[str, ...]:
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if values and named:
            raise ValueError("labels() takes label values by position or by name, not both")
        if named:
            if sorted(named) != sorted(self.labelnames):
                raise ValueError(f"{self.name}: incorrect label names {sorted(named)}")
            values = tuple(named[label] for label in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: incorrect label count")
        return tuple(str(value) for value in values)

    def labels(self, *values: str, **named: str) -> _C:
        """The child of these label values (by position or by name), made on first use."""
        child = self._children.get(values) if not named else None
        if child is None:
            key = self._key(values, named)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
        return child

    def _unlabelled(self) -> _C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: use labels() first")
        return self._children[()]

    def _snapshot(self) -> list[tuple[tuple[str, ...], _C]]:
        # dict.copy() copies the table in one C call, allocating nothing per item (so no
        # garbage collection, whose finalizers could let the loop's thread run, midway).
        return list(self._children.copy().items())

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for values, child in self._snapshot():
            self._add(family, list(values), child)
        return [family]

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, values: list[str], child: _C) -> None:
        raise NotImplementedError


class LeanCounter(_Family[CounterChild]):
    """A counter family (``name`` with or without ``_total``, as prometheus_client's)."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1) -> None:
        """The label-less counter's increment."""
        self._unlabelled().inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: list[str], child: CounterChild) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(values, child.value)


class LeanHistogram(_Family[HistogramChild]):
    """A histogram family with fixed bucket bounds (``+Inf`` added, as prometheus_client
    adds it)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = tuple(sorted(float(bound) for bound in buckets))
        if not bounds or bounds[-1] != math.inf:
            bounds += (math.inf,)
        self.bounds = bounds
        self._le = [floatToGoString(bound) for bound in bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        """The label-less histogram's observation."""
        self._unlabelled().observe(amount)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: list[str], child: HistogramChild) -> None:
        assert isinstance(family, HistogramMetricFamily)
        counts, total = list(child.counts), child.sum
        cumulative, buckets = 0, []
        for le, count in zip(self._le, counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(values, buckets, total)
