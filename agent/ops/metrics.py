"""The agent's Prometheus metrics on prometheus_client, behind the small registry interface the agent uses.

prometheus_client renders the text exposition format and keeps the values; this module adds only what it
does not do: a bound on the label sets of each metric (an extra label set still accepts updates, so callers
never fail, but it is not exported and is counted in `dropped_series`: a per-track or per-file label must
not grow a scrape without limit), callback gauges read at scrape time whose failure omits only their value,
`unregister` by name, and a refusal of the `le` label outside histograms. `_created` samples are off:
dashboards do not use them and they doubled every counter's lines.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

prometheus_client.disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_log = logging.getLogger("agent.metrics")
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[str, ...]
CallbackResult = float | Mapping[LabelKey, float] | None


class _Detached:
    """A label set beyond the bound: accepts every update, exports nothing."""

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")

    def dec(self, amount: float = 1.0) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    @contextmanager
    def time(self) -> Iterator[None]:
        yield


class _Metric:
    """One prometheus_client metric with bounded label sets."""

    def __init__(self, inner: Any, labelnames: Sequence[str], max_series: int) -> None:
        self._inner, self._labelnames, self._max = inner, tuple(labelnames), max_series
        self._keys: set[LabelKey] = set()
        self._lock = threading.Lock()
        self.dropped_series = 0
        self._detached = _Detached()

    def labels(self, *values: str, **named: str) -> Any:
        if values and named:
            raise ValueError("give label values by position or by name, not both")
        if named:
            if set(named) != set(self._labelnames):
                raise ValueError(f"labels must be exactly {self._labelnames}")
            values = tuple(named[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"expected {len(self._labelnames)} label values, got {len(values)}")
        key = tuple(str(v) for v in values)
        with self._lock:
            if key not in self._keys:
                if len(self._keys) >= self._max:
                    self.dropped_series += 1
                    return self._detached
                self._keys.add(key)
        return self._inner.labels(*key)

    def _only(self) -> Any:
        if self._labelnames:
            raise ValueError("this metric has labels: use .labels(...)")
        return self._inner


class Counter(_Metric):
    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)


class Gauge(_Metric):
    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)


class Histogram(_Metric):
    def observe(self, value: float) -> None:
        self._only().observe(value)

    def time(self) -> AbstractContextManager[None]:
        return self._only().time()


class CallbackGauge(Collector):
    """A gauge whose value(s) `fn()` gives at each scrape: a number, {label values: number}, or None (no
    sample). A failing callback omits its samples (logged once), never the whole scrape."""

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str], fn: Callable[[], CallbackResult]
    ):
        self.name, self._help, self._labelnames, self._fn = name, help_text, list(labelnames), fn
        self.errors = 0

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self._help, labels=self._labelnames)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self._help, labels=self._labelnames)
        try:
            result = self._fn()
            if isinstance(result, Mapping):
                rows = sorted((tuple(str(v) for v in k), float(x)) for k, x in result.items())
            else:
                rows = [] if result is None else [((), float(result))]
            if any(len(k) != len(self._labelnames) for k, _ in rows):
                raise ValueError(f"callback returned label sets not matching {self._labelnames}")
            for key, value in rows:
                family.add_metric(list(key), value)
        except Exception as exc:  # a broken callback must not break the whole scrape
            self.errors += 1
            if self.errors == 1:
                _log.warning("metric %s: callback failed (%s); omitted from scrapes", self.name, exc)
            family = GaugeMetricFamily(self.name, self._help, labels=self._labelnames)
        yield family


class Registry:
    """The agent's metrics, by name, in one prometheus_client CollectorRegistry."""

    def __init__(self, *, max_series_per_metric: int = 500) -> None:
        self._max_series = max_series_per_metric
        self._registry = CollectorRegistry(auto_describe=True)
        self._by_name: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _add(self, name: str, labelnames: Sequence[str], make: Callable[[], Any], histogram: bool = False):
        # The classic name rules: prometheus_client also accepts UTF-8 names, which older scrapers refuse.
        if not _NAME_RE.match(name) or not all(
            _LABEL_RE.match(n) and not n.startswith("__") for n in labelnames
        ):
            raise ValueError(f"invalid metric or label name: {name} {list(labelnames)}")
        if "le" in labelnames and not histogram:
            raise ValueError("the label 'le' is reserved")
        with self._lock:
            if name in self._by_name:
                raise ValueError(f"metric {name!r} is already registered")
            collector = make()  # prometheus_client validates names, labels and buckets here
            self._by_name[name] = collector
            return collector

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        inner = self._add(
            name,
            labelnames,
            lambda: prometheus_client.Counter(name, help_text, labelnames, registry=self._registry),
        )
        return Counter(inner, labelnames, self._max_series)

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        inner = self._add(
            name,
            labelnames,
            lambda: prometheus_client.Gauge(name, help_text, labelnames, registry=self._registry),
        )
        return Gauge(inner, labelnames, self._max_series)

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        if list(buckets) != sorted(buckets):
            raise ValueError("histogram buckets must be sorted")
        inner = self._add(
            name,
            labelnames,
            lambda: prometheus_client.Histogram(
                name, help_text, labelnames, registry=self._registry, buckets=tuple(buckets)
            ),
            histogram=True,
        )
        return Histogram(inner, labelnames, self._max_series)

    def gauge_callback(
        self, name: str, help_text: str, fn: Callable[[], CallbackResult], labelnames: Sequence[str] = ()
    ) -> CallbackGauge:
        def make() -> CallbackGauge:
            gauge = CallbackGauge(name, help_text, labelnames, fn)
            self._registry.register(gauge)
            return gauge

        return self._add(name, labelnames, make)

    def unregister(self, name: str) -> None:
        with self._lock:
            collector = self._by_name.pop(name, None)
        if collector is not None:
            self._registry.unregister(collector)

    def render(self) -> str:
        """The whole registry in text exposition format 0.0.4."""
        return generate_latest(self._registry).decode("utf-8")


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
