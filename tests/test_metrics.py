"""Metrics registry parsed back from text format 0.0.4, and the health endpoint over real loopback HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pydantic
import pytest

from agent.errors import FatalError
from agent.ops.health import HealthServer, Readiness
from agent.ops.metrics import CONTENT_TYPE, AgentMetrics, Registry
from agent.ops.metrics_config import MetricsConfig
from agent.ops.systemd import HeartbeatRegistry

# --- a small parser written from the text format rules ---------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _parse_labels(body: str) -> frozenset[tuple[str, str]]:
    labels, pos = [], 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        assert match, f"bad label set at {body[pos:]!r}"
        labels.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return frozenset(labels)


def parse(text: str) -> tuple[dict[str, str], dict[str, str], dict[tuple[str, frozenset], float]]:
    """(help by name, type by name, value by (sample name, labels)); asserts on any malformed line."""
    assert text.endswith("\n")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name not in types, f"TYPE given twice for {name}"
            types[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"malformed sample line {line!r}"
            base = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
            assert match.group(1) in types or base in types, f"sample before its TYPE: {line!r}"
            key = (match.group(1), _parse_labels(match.group(2) or ""))
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(match.group(3))  # float() reads +Inf, -Inf and NaN too
    return helps, types, samples


def L(**labels: str) -> frozenset[tuple[str, str]]:  # noqa: N802 (reads like a constructor)
    return frozenset(labels.items())


# --- registry ------------------------------------------------------------------------------------------


def test_counter_gauge_labels_and_escaping_round_trip() -> None:
    reg = Registry()
    requests = reg.counter("req_total", 'Requests with "quotes", a \\ and\na newline', ["path", "code"])
    requests.labels("/a", "200").inc()
    requests.labels(path="/a", code="200").inc(2)
    tricky = 'we"ird\\path\nx'
    requests.labels(tricky, "500").inc()
    temp = reg.gauge("temp_celsius", "Board temperature")
    temp.set(41.5)
    temp.dec(0.5)
    helps, types, samples = parse(reg.render())
    assert types == {"req_total": "counter", "temp_celsius": "gauge"}
    assert helps["req_total"] == 'Requests with "quotes", a \\ and\na newline'
    assert samples[("req_total", L(path="/a", code="200"))] == 3.0
    assert samples[("req_total", L(path=tricky, code="500"))] == 1.0
    assert samples[("temp_celsius", L())] == 41.0


def test_histogram_buckets_are_cumulative() -> None:
    reg = Registry()
    latency = reg.histogram("stage_seconds", "Stage latency", ["stage"], buckets=[0.01, 0.1, 1.0])
    for value in (0.005, 0.01, 0.05, 0.5, 0.7, 3.0):  # 0.01 sits exactly on a bound: le means <=
        latency.labels("detect").observe(value)
    outer = time.perf_counter()
    with latency.labels("embed").time():
        time.sleep(0.02)  # a stage that takes at least 20 ms
    outer = time.perf_counter() - outer
    whole = reg.histogram("frame_seconds", "Unlabelled", buckets=[0.5])
    with whole.time():
        pass
    _, types, samples = parse(reg.render())
    assert types["stage_seconds"] == "histogram"
    detect = {
        le: samples[("stage_seconds_bucket", L(stage="detect", le=le))]
        for le in ("0.01", "0.1", "1.0", "+Inf")
    }
    assert detect == {"0.01": 2.0, "0.1": 3.0, "1.0": 5.0, "+Inf": 6.0}
    assert samples[("stage_seconds_count", L(stage="detect"))] == 6.0
    assert samples[("stage_seconds_sum", L(stage="detect"))] == pytest.approx(4.265)
    embed = samples[("stage_seconds_sum", L(stage="embed"))]
    assert 0.02 <= embed <= outer  # the with-block's own duration
    assert samples[("stage_seconds_bucket", L(stage="embed", le="0.01"))] == 0.0
    # Usually 1: the block lasts about 20 ms. A loaded machine may stretch the sleep past 0.1 s, and then
    # the observation belongs above that bound; either way the bucket must follow the observed value.
    assert samples[("stage_seconds_bucket", L(stage="embed", le="0.1"))] == float(embed <= 0.1)
    assert samples[("stage_seconds_bucket", L(stage="embed", le="+Inf"))] == 1.0
    assert samples[("frame_seconds_bucket", L(le="0.5"))] == 1.0
    assert samples[("frame_seconds_bucket", L(le="+Inf"))] == 1.0


def test_callback_gauges_and_a_failing_callback() -> None:
    reg = Registry()
    depths = {"frames": 3, "events": 0}
    reg.gauge_callback(
        "queue_depth", "Items waiting", lambda: {(k,): v for k, v in depths.items()}, ["queue"]
    )
    reg.gauge_callback("broken", "Raises", lambda: 1 / 0)
    reg.gauge_callback("absent", "No value yet", lambda: None)
    reg.gauge_callback("inf_gauge", "Special values", lambda: math.inf)
    depths["events"] = 7
    _, types, samples = parse(reg.render())
    assert samples[("queue_depth", L(queue="frames"))] == 3.0
    assert samples[("queue_depth", L(queue="events"))] == 7.0  # read at scrape time
    assert samples[("inf_gauge", L())] == math.inf
    assert not any(name in ("broken", "absent") for name, _ in samples)
    assert types["broken"] == "gauge"  # metadata stays, the failing value is omitted


def test_invalid_use_is_rejected() -> None:
    reg = Registry()
    counter = reg.counter("ok_total", "fine", ["result"])
    with pytest.raises(ValueError):
        reg.counter("ok_total", "again")
    with pytest.raises(ValueError):
        reg.gauge("bad-name", "dash")
    with pytest.raises(ValueError):
        reg.gauge("g", "reserved label", ["le"])
    with pytest.raises(ValueError):
        reg.histogram("h", "unsorted", buckets=[1.0, 0.5])
    with pytest.raises(ValueError):
        counter.labels("known").inc(-1)
    with pytest.raises(ValueError):
        counter.inc()  # labelled metric used without labels
    with pytest.raises(ValueError):
        counter.labels("a", "b")


def test_label_sets_are_bounded_and_drops_counted() -> None:
    reg = Registry(max_series_per_metric=3)
    counter = reg.counter("per_track_total", "unbounded label values", ["track"])
    for i in range(10):
        counter.labels(str(i)).inc()
    _, _, samples = parse(reg.render())
    assert len([k for k in samples if k[0] == "per_track_total"]) == 3
    assert counter.dropped_series == 7


def test_concurrent_updates_are_not_lost() -> None:
    reg = Registry()
    counter = reg.counter("hits_total", "hits")
    hist = reg.histogram("h_seconds", "h", buckets=[1.0])

    def work() -> None:
        for _ in range(20_000):
            counter.inc()
            hist.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    _, _, samples = parse(reg.render())
    assert samples[("hits_total", L())] == 80_000.0
    assert samples[("h_seconds_count", L())] == 80_000.0
    assert samples[("h_seconds_bucket", L(le="1.0"))] == 80_000.0


def test_agent_metrics_names() -> None:
    reg = Registry()
    metrics = AgentMetrics(reg, version="0.1.0")
    metrics.frames.labels("front").inc(30)
    metrics.recognitions.labels("known").inc()
    metrics.stage_latency.labels("detect").observe(0.012)
    metrics.gallery_size.set(40)
    metrics.track_queue("frames", lambda: 2)
    _, types, samples = parse(reg.render())
    assert samples[("face_agent_build_info", L(version="0.1.0"))] == 1.0
    assert samples[("face_agent_frames_total", L(camera="front"))] == 30.0
    assert samples[("face_agent_recognitions_total", L(result="known"))] == 1.0
    assert samples[("face_agent_stage_latency_seconds_count", L(stage="detect"))] == 1.0
    assert samples[("face_agent_gallery_size", L())] == 40.0
    assert samples[("face_agent_queue_depth", L(queue="frames"))] == 2.0
    assert "face_agent_outbox_depth" in types
    assert not any(name == "face_agent_outbox_depth" for name, _ in samples)  # no source tracked yet
    metrics.track_outbox(lambda: 5)
    _, _, samples = parse(reg.render())
    assert samples[("face_agent_outbox_depth", L())] == 5.0


# --- config --------------------------------------------------------------------------------------------


def test_metrics_config() -> None:
    assert MetricsConfig().host == "127.0.0.1"
    assert MetricsConfig(host="::1").host == "::1"
    for bad in ({"host": "example.org"}, {"port": 70000}, {"max_connections": 0}, {"extra": 1}):
        with pytest.raises(pydantic.ValidationError):
            MetricsConfig(**bad)


# --- HTTP ----------------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@contextlib.contextmanager
def _serving(
    heartbeats: HeartbeatRegistry, **config: float
) -> Iterator[tuple[HealthServer, Registry, HeartbeatRegistry, Readiness]]:
    registry, readiness = Registry(), Readiness()
    cfg = MetricsConfig(port=0, **({"request_timeout_s": 1.0, "max_connections": 2} | config))
    srv = HealthServer(cfg, registry=registry, heartbeats=heartbeats, readiness=readiness)
    srv.start()
    try:
        yield srv, registry, heartbeats, readiness
    finally:
        srv.stop()


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, Registry, HeartbeatRegistry, Readiness]]:
    with _serving(HeartbeatRegistry()) as running:
        yield running


def test_metrics_over_http(server: tuple[HealthServer, Registry, HeartbeatRegistry, Readiness]) -> None:
    srv, registry, _, _ = server
    registry.counter("face_agent_recognitions_total", "outcomes", ["result"]).labels("unknown").inc(4)
    status, ctype, body = _get(srv.url + "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE
    _, types, samples = parse(body.decode())
    assert samples[("face_agent_recognitions_total", L(result="unknown"))] == 4.0
    assert types["face_agent_http_health_rejected_total"] == "counter"
    assert _get(srv.url + "/nope")[0] == 404


def test_healthz_follows_heartbeats() -> None:
    # The heartbeats run on the test's clock, so fresh and stale are decided here: on the wall clock, a loaded
    # machine could let a 0.1 s max age pass during the very request meant to find the heartbeat fresh.
    # (tests/test_serve_watchdog.py covers staleness on the real clock.)
    now = [1000.0]
    with _serving(HeartbeatRegistry(clock=lambda: now[0])) as (srv, _, heartbeats, _):
        status, _, body = _get(srv.url + "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")  # the process answers, nothing registered
        camera = heartbeats.register("camera/front", max_age_s=0.1)
        heartbeats.register("publish", max_age_s=60)
        assert _get(srv.url + "/healthz")[0] == 200
        now[0] += 0.15  # the camera thread misses its beats for 0.15 s
        status, _, body = _get(srv.url + "/healthz")
        doc = json.loads(body)
        assert status == 503
        assert [s["name"] for s in doc["stale"]] == ["camera/front"]
        assert doc["stale"][0]["age_s"] == 0.15
        assert set(doc["heartbeats"]) == {"camera/front", "publish"}
        camera.beat()
        assert _get(srv.url + "/healthz")[0] == 200


def test_readyz_flips(server: tuple[HealthServer, Registry, HeartbeatRegistry, Readiness]) -> None:
    srv, _, _, readiness = server
    status, _, body = _get(srv.url + "/readyz")
    assert status == 503
    assert json.loads(body)["ready"] is False
    readiness.set("models_warmed", True)
    assert _get(srv.url + "/readyz")[0] == 503  # gallery still missing
    readiness.set("gallery_loaded", True, "40 faces")
    status, _, body = _get(srv.url + "/readyz")
    doc = json.loads(body)
    assert status == 200
    assert doc["checks"]["gallery_loaded"] == {"ok": True, "detail": "40 faces"}
    readiness.set("gallery_loaded", False, "reloading")
    assert _get(srv.url + "/readyz")[0] == 503
    with pytest.raises(ValueError):
        readiness.set("typo", True)


def test_connections_are_bounded() -> None:
    # Idle clients are dropped after request_timeout_s. 5 s (the default) rather than the fixture's 1 s: the
    # two idle clients must still hold their slots when the third connection comes, however late a loaded
    # machine runs this thread.
    with _serving(HeartbeatRegistry(), request_timeout_s=5.0) as (srv, _, _, _):
        host, port = srv.address
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(2)]  # take both slots
        try:
            # A connect() returns once the kernel has queued the connection, before the server has taken it
            # (and a slot). Instead of sleeping until it has, try until a connection is closed at once: one
            # that is answered came while a slot was still free, and is a retry, not a failure.
            deadline = time.monotonic() + 30
            while _answered(host, port):
                assert time.monotonic() < deadline, "a third connection was never refused"
                time.sleep(0.02)  # polling interval, not synchronisation
            _, _, samples = parse(_wait_for_slot(srv.url + "/metrics"))
            assert samples[("face_agent_http_health_rejected_total", L())] >= 1.0
        finally:
            for s in idle:
                s.close()


def _answered(host: str, port: int) -> bool:
    """GET /healthz on a new connection: True when answered, False when the server closed it at once."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return True
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return False
    finally:
        conn.close()


def _wait_for_slot(url: str) -> str:
    """Idle clients are dropped after request_timeout_s; then requests are served again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _, body = _get(url)
            assert status == 200
            return body.decode()
        except (urllib.error.URLError, http.client.RemoteDisconnected, ConnectionResetError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_start_stop_and_bind_failure() -> None:
    config = MetricsConfig(port=0)
    first = HealthServer(config, registry=Registry(), heartbeats=HeartbeatRegistry(), readiness=Readiness())
    first.start()
    host, port = first.address
    taken = MetricsConfig(port=port)
    second = HealthServer(taken, registry=Registry(), heartbeats=HeartbeatRegistry(), readiness=Readiness())
    with pytest.raises(FatalError) as excinfo:
        second.start()
    assert excinfo.value.code == "metrics_bind_failed"
    started = time.monotonic()
    assert first.stop() is True
    assert time.monotonic() - started < 2.0
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()
