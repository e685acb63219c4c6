"""Prometheus metrics of the scheduler, in a ``CollectorRegistry`` the scheduler owns.

Event counts and durations are prometheus_client counters and histograms updated where things
happen. Levels (queue depth, ledger bytes, runners per state) are read from the scheduler's
``statistics()`` at scrape time by a custom collector, so a gauge can never go stale or drift from
the state it describes. api/ exposes the registry with ``prometheus_client.generate_latest``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from modelrunner.scheduler._scheduler import SchedulerStatistics

__all__ = ["SchedulerMetrics"]

_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class SchedulerMetrics:
    """Counters and histograms, plus a collector of the current levels."""

    def __init__(self, statistics: Callable[[], SchedulerStatistics]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.loads = Counter(
            "modelrunner_runner_loads",
            "Engine loads started, by result (ok, failed, cancelled).",
            ["backend", "mode", "result"],
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "modelrunner_runner_load_seconds",
            "Time from starting an engine to its first healthy answer.",
            ["backend"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.unloads = Counter(
            "modelrunner_runner_unloads",
            "Runners stopped, by reason (idle, evicted, unload, configure, died, oom, broken, shutdown).",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "modelrunner_queue_wait_seconds",
            "Time requests waited for a runner (loading or memory), by outcome.",
            ["outcome"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "modelrunner_admission_rejections",
            "Requests refused before reaching a runner, by reason (queue_full, max_wait, too_large).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_LevelCollector(statistics))


class _LevelCollector(Collector):
    def __init__(self, statistics: Callable[[], SchedulerStatistics]) -> None:
        self._statistics = statistics

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._statistics()
        queued = GaugeMetricFamily(
            "modelrunner_queue_depth", "Requests waiting for a runner to load or for memory."
        )
        queued.add_metric([], stats.queued_requests)
        yield queued
        pending = GaugeMetricFamily("modelrunner_pending_loads", "Models with requests waiting to load.")
        pending.add_metric([], stats.pending_loads)
        yield pending
        runners = GaugeMetricFamily("modelrunner_runners", "Runners by lifecycle state.", labels=["state"])
        for state, count in sorted(stats.runners_by_state.items()):
            runners.add_metric([state], count)
        yield runners
        in_flight = GaugeMetricFamily("modelrunner_requests_in_flight", "Requests holding a runner.")
        in_flight.add_metric([], stats.in_flight)
        yield in_flight
        ledger = stats.ledger
        for name, help_text, values in (
            ("modelrunner_memory_budget_bytes", "Memory budget per device.", ledger.budget),
            ("modelrunner_memory_reserved_bytes", "Memory reserved by runners per device.", ledger.reserved),
            ("modelrunner_memory_peak_reserved_bytes", "Highest reservation seen per device.",
             ledger.peak_reserved),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["device"])
            for device, value in sorted(values.items()):
                family.add_metric([device], value)
            yield family
        measured = GaugeMetricFamily(
            "modelrunner_memory_measured_bytes", "Host memory the runners' cgroups report in use."
        )
        measured.add_metric([], stats.memory_measured)
        yield measured
