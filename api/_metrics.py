"""`/metrics`: the API's own counters, the scheduler's metrics and every runner's engine metrics.

Engine metrics are scraped from each ready runner's `/metrics` (llama-server runs with `--metrics`)
at request time, concurrently and under a deadline, then re-exported with `backend`, `model` and
`mode` labels the way DMR's aggregated handler does. Two fixes make the result pass
`promtool check metrics`: `:` in names (`llamacpp:prompt_tokens_total`) becomes `_`, and a counter
whose samples lack the `_total` suffix (`llamacpp:n_tokens_max`, a running maximum) is exported as a
gauge. Families of the same name from several runners are merged into one, as the text format
requires.

The parsing and relabelling (`relabel_engine_metrics`) is pure; `MetricsExporter.render()` does the
I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "ApiMetrics",
    "EngineScrape",
    "merge_families",
    "relabel_engine_metrics",
    "render_families",
]

log = logging.getLogger("modelrunner.api.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ApiMetrics:
    """The API server's own metrics, in a registry it owns."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelrunner_api_requests",
            "HTTP requests answered, by route group and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.inference = Counter(
            "modelrunner_api_inference_requests",
            "Inference requests proxied to runners, by mode and outcome (ok, error, client_gone).",
            ["mode", "outcome"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "modelrunner_api_inference_seconds",
            "Time from reading an inference request to its last byte, queueing and loading included.",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._inference_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.engine_scrape_failures = Counter(
            "modelrunner_api_engine_scrape_failures",
            "Runner /metrics scrapes that failed or timed out.",
            registry=self.registry,
        )

    # Every request counts here, so the labelled children are kept instead of looked up each
    # time (`labels()` locks, validates and builds a key); the label sets are few and fixed.

    def observe_request(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.inc()

    def observe_inference(self, mode: str, outcome: str, status: int, seconds: float) -> None:
        children = self._inference_children.get((mode, outcome))
        if children is None:
            children = (self.inference.labels(mode, outcome), self.inference_seconds.labels(mode))
            self._inference_children[(mode, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)


@dataclass(frozen=True)
class EngineScrape:
    """One runner's `/metrics` text and the labels its series get."""

    backend: str
    model: str
    mode: str
    text: str


def _clean_name(name: str) -> str:
    return name.replace(":", "_")


def _bare_counters(text: str) -> set[str]:
    """Counters whose samples are written without the `_total` suffix.

    prometheus-client's parser silently renames such samples to `<name>_total`, so they are found
    in the raw text: a `# TYPE x counter` line and a sample line named exactly `x`.
    """
    declared = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4 and parts[3] == "counter" and not parts[2].endswith("_total"):
                declared.add(parts[2])
    if not declared:
        return set()
    bare = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in declared:
                bare.add(name)
    return bare


def relabel_engine_metrics(scrape: EngineScrape) -> list[Metric]:
    """Parse one runner's exposition text; rename, retype and label its families.

    Raises:
        ValueError: the text is not Prometheus exposition format.
    """
    labels = {"backend": scrape.backend, "model": scrape.model, "mode": scrape.mode}
    bare_counters = _bare_counters(scrape.text)
    out: list[Metric] = []
    for family in text_string_to_metric_families(scrape.text):
        name = _clean_name(family.name)
        # A counter sampled without `_total` (llama-server's running maximum `n_tokens_max`) is a
        # gauge in all but name; exported as one it keeps its name and passes promtool.
        as_gauge = family.type == "counter" and family.name in bare_counters
        kind = "gauge" if as_gauge else family.type
        metric = Metric(name, family.documentation or f"{name} reported by the engine", kind)
        for sample in family.samples:
            if as_gauge and sample.name.endswith("_created"):
                continue
            sample_name = name if as_gauge else _clean_name(sample.name)
            metric.add_sample(sample_name, {**sample.labels, **labels}, sample.value, sample.timestamp)
        out.append(metric)
    return out


def merge_families(groups: Iterable[Sequence[Metric]]) -> list[Metric]:
    """One family per name across runners; a family whose type disagrees with the first seen is
    dropped (logged) rather than emitted twice."""
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            existing = merged.get(family.name)
            if existing is None:
                merged[family.name] = family
            elif existing.type != family.type:
                log.warning(
                    "engine metric %s has type %s here and %s elsewhere; dropped",
                    family.name,
                    family.type,
                    existing.type,
                )
            else:
                existing.samples.extend(family.samples)
    return list(merged.values())


class _StaticCollector:
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _Combined:
    """What `generate_latest` renders: several collectors, one after the other."""

    def __init__(self, collectors: Sequence[Collector | CollectorRegistry | _StaticCollector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def render_families(api: ApiMetrics, scheduler: Collector | None, engine_families: Sequence[Metric]) -> bytes:
    parts: list[Collector | CollectorRegistry | _StaticCollector] = [api.registry]
    if scheduler is not None:
        parts.append(scheduler)
    parts.append(_StaticCollector(engine_families))
    return generate_latest(_Combined(parts))
