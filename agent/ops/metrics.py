"""A small thread-safe Prometheus registry and the text exposition format 0.0.4, written in-project.

Counters, gauges, callback gauges (read at scrape time, e.g. queue depths) and histograms with fixed buckets,
each optionally labelled. The number of label sets per metric is bounded: an extra label set still accepts
updates, so callers never fail, but it is not exported and is counted in `dropped_series`.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Generic, Protocol, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_log = logging.getLogger("agent.metrics")

LabelKey = tuple[str, ...]
Row = tuple[str, dict[str, str], float]  # sample name, labels, value
CallbackResult = float | Mapping[LabelKey, float] | None


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Child(Protocol):
    def samples(self) -> list[tuple[str, str | None, float]]:  # suffix, "le" value or None, value
        ...


class CounterChild:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up, got inc({amount})")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        return self._value

    def samples(self) -> list[tuple[str, str | None, float]]:
        return [("", None, self._value)]


class GaugeChild(CounterChild):
    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)


class HistogramChild:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # finite upper bounds; +Inf is implicit
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        index = bisect.bisect_left(self._bounds, value)  # first bound >= value, i.e. the "le" bucket
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the wall time of the with-block in seconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)

    def samples(self) -> list[tuple[str, str | None, float]]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out: list[tuple[str, str | None, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
            running += count  # exposition buckets are cumulative
            out.append(("_bucket", format_value(bound), float(running)))
        out.append(("_sum", None, total))
        out.append(("_count", None, float(running)))
        return out


class _Base:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for metric {name!r}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def collect(self) -> list[Row]:
        raise NotImplementedError


C = TypeVar("C", bound=_Child)


class _Metric(_Base, Generic[C]):
    def __init__(self, name: str, help_text: str, labelnames: Sequence[str], max_series: int) -> None:
        super().__init__(name, help_text, labelnames)
        self._max_series = max_series
        self._children: dict[LabelKey, C] = {}
        self._lock = threading.Lock()
        self.dropped_series = 0

    def _new_child(self) -> C:
        raise NotImplementedError

    def _child(self, key: LabelKey) -> C:
        with self._lock:
            child = self._children.get(key)
            if child is not None:
                return child
            child = self._new_child()
            if len(self._children) < self._max_series:
                self._children[key] = child
                return child
            self.dropped_series += 1
            first = self.dropped_series == 1
        if first:
            _log.warning(
                "metric %s: over %d label sets; new ones are not exported", self.name, self._max_series
            )
        return child  # detached: accepts updates but is never rendered

    def labels(self, *values: str, **named: str) -> C:
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {sorted(named)}")
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {values}")
        return self._child(tuple(str(v) for v in values))

    def _only(self) -> C:
        if self.labelnames:
            raise ValueError(f"metric {self.name} has labels {self.labelnames}: use .labels(...)")
        return self._child(())

    def collect(self) -> list[Row]:
        with self._lock:
            items = sorted(self._children.items())
        rows: list[Row] = []
        for key, child in items:
            for suffix, le, value in child.samples():
                labels = dict(zip(self.labelnames, key, strict=True))
                if le is not None:
                    labels["le"] = le
                rows.append((self.name + suffix, labels, value))
        return rows


class Counter(_Metric[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)


class Gauge(_Metric[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)


class Histogram(_Metric[HistogramChild]):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str], max_series: int, buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, labelnames, max_series)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or any(math.isnan(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name}: buckets must be non-empty and strictly increasing")
        self.bounds = bounds

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def time(self) -> AbstractContextManager[None]:
        return self._only().time()


class CallbackGauge(_Base):
    """A gauge read at scrape time. The callback returns a float, None (no value now: omitted) or, when
    labelled, {label values tuple: float}. A failing callback drops only this metric from the scrape."""

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str], fn: Callable[[], CallbackResult]
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._fn = fn
        self.errors = 0

    def _rows(self) -> list[Row]:
        result = self._fn()
        if result is None:
            return []
        if isinstance(result, Mapping):
            pairs = [(tuple(str(v) for v in key), float(value)) for key, value in result.items()]
        else:
            pairs = [((), float(result))]
        if any(len(key) != len(self.labelnames) for key, _ in pairs):
            raise ValueError(f"callback returned label sets not matching {self.labelnames}")
        return [
            (self.name, dict(zip(self.labelnames, key, strict=True)), value) for key, value in sorted(pairs)
        ]

    def collect(self) -> list[Row]:
        try:
            return self._rows()
        except Exception as exc:  # a broken callback must not break the whole scrape
            self.errors += 1
            if self.errors == 1:
                _log.warning("metric %s: callback failed (%s); omitted from scrapes", self.name, exc)
            return []


class Registry:
    """Holds metrics in registration order and renders them; names are unique."""

    def __init__(self, *, max_series_per_metric: int = 500) -> None:
        self._max_series = max_series_per_metric
        self._metrics: dict[str, _Base] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Base) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labelnames, self._max_series)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labelnames, self._max_series)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        metric = Histogram(name, help_text, labelnames, self._max_series, buckets)
        self._add(metric)
        return metric

    def gauge_callback(
        self, name: str, help_text: str, fn: Callable[[], CallbackResult], labelnames: Sequence[str] = ()
    ) -> CallbackGauge:
        metric = CallbackGauge(name, help_text, labelnames, fn)
        self._add(metric)
        return metric

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def render(self) -> str:
        """The whole registry in text exposition format 0.0.4."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for sample_name, labels, value in metric.collect():
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(
                    f"{sample_name}{{{body}}} {format_value(value)}"
                    if body
                    else f"{sample_name} {format_value(value)}"
                )
        return "\n".join(lines) + "\n" if lines else ""


class AgentMetrics:
    """The agent's metric names in one place; the app creates one and hands each part what it updates."""

    def __init__(self, registry: Registry, version: str) -> None:
        info = registry.gauge(
            "face_agent_build_info", "Always 1; the version label says what runs", ["version"]
        )
        info.labels(version).set(1)
        self.frames = registry.counter("face_agent_frames_total", "Frames taken from a camera", ["camera"])
        self.frames_dropped = registry.counter(
            "face_agent_frames_dropped_total", "Frames dropped, by camera and reason", ["camera", "reason"]
        )
        self.fps = registry.gauge("face_agent_fps", "Frames processed per second, recent average", ["camera"])
        self.stage_latency = registry.histogram(
            "face_agent_stage_latency_seconds", "Time spent per pipeline stage", ["stage"]
        )
        self.recognitions = registry.counter(
            "face_agent_recognitions_total", "Recognition outcomes (known, unknown, rejected...)", ["result"]
        )
        self.liveness = registry.counter(
            "face_agent_liveness_total",
            "Published events of cameras with a liveness level, by the verdict they carry at that level "
            "(passed, failed, no_result)",
            ["camera", "result"],
        )
        self.gallery_size = registry.gauge("face_agent_gallery_size", "Faces in the loaded gallery index")
        self._lock = threading.Lock()
        self._queues: dict[str, Callable[[], float]] = {}
        self._outbox: Callable[[], float] | None = None
        self._sync: Callable[[], dict] | None = None
        self._registry = registry
        registry.gauge_callback(
            "face_agent_queue_depth", "Items waiting per queue", self._queue_depths, ["queue"]
        )
        registry.gauge_callback(
            "face_agent_outbox_depth", "Events waiting in the MQTT outbox", self._outbox_depth
        )

    def track_queue(self, name: str, depth: Callable[[], float]) -> None:
        """Export `depth()` as face_agent_queue_depth{queue=name} at every scrape."""
        with self._lock:
            self._queues[name] = depth

    def track_outbox(self, depth: Callable[[], float]) -> None:
        with self._lock:
            self._outbox = depth

    def track_sync(self, status: Callable[[], dict]) -> None:
        """Export the edge syncer's status (agent/sync/edge.py): lag, operations behind, stale groups."""
        with self._lock:
            first = self._sync is None
            self._sync = status
        if first:
            reg = self._registry
            reg.gauge_callback(
                "face_agent_sync_lag_seconds",
                "Seconds since the last sync round that reached the hub's head (absent: never)",
                lambda: self._sync_value("lag_s"),
            )
            reg.gauge_callback(
                "face_agent_sync_ops_behind",
                "Feed operations known to be waiting on the hub",
                lambda: self._sync_value("ops_behind"),
            )
            reg.gauge_callback(
                "face_agent_sync_failures",
                "Sync rounds failed in a row",
                lambda: self._sync_value("failures"),
            )
            reg.gauge_callback(
                "face_agent_sync_stale_groups",
                "Mirrored groups that grant no access (not synced within sync.max_staleness_s)",
                lambda: self._sync_value("stale"),
            )

    def _sync_value(self, name: str) -> float | None:
        with self._lock:
            fn = self._sync
        if fn is None:
            return None
        status = fn()
        if name == "stale":
            return float(sum(1 for g in status["groups"].values() if g.get("stale")))
        value = status.get(name)
        return None if value is None else float(value)

    def _queue_depths(self) -> dict[LabelKey, float]:
        with self._lock:
            queues = dict(self._queues)
        return {(name,): float(fn()) for name, fn in queues.items()}

    def _outbox_depth(self) -> float | None:
        with self._lock:
            fn = self._outbox
        return None if fn is None else float(fn())
