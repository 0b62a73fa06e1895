"""Wiring of `face-agent run`: build the parts from an AgentConfig, start and stop them in order.

Start: logging, metrics/health endpoint, watchdog -> engine (warm-up) -> gallery (indexes loaded) -> event
sink -> recognition threads -> capture threads -> READY=1. Stop (SIGTERM/SIGINT, or every finite source
finished): STOPPING=1 -> capture -> recognition (queued events are still published) -> sink -> gallery ->
endpoint. SIGHUP re-reads the config file and reopens the gallery (picking up faces enrolled by another
process), then restarts cameras, recognition and the API; the engine and sink keep running (a change to
those sections is logged as needing a restart).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent import __version__
from agent.capture import CaptureWorker, open_source
from agent.capture.sources import check_local_source
from agent.config import AgentConfig, load_agent_config
from agent.errors import AgentError, ConfigError
from agent.gallery import Gallery, Matcher, ScoreMap
from agent.gallery.variants import open_gallery
from agent.ops.health import HealthServer, Readiness
from agent.ops.lock import StateLock
from agent.ops.log import setup_logging
from agent.ops.metrics import AgentMetrics, Registry
from agent.ops.systemd import (
    Heartbeat,
    HeartbeatRegistry,
    Notifier,
    StatusReporter,
    WatchdogPinger,
    watchdog_interval,
)
from agent.publish import EventSink, build_sink
from agent.recognition.observe import FrameObserver
from agent.recognition.pipeline import RecognitionPipeline

log = logging.getLogger("agent.app")


class AgentApp:
    """Owns every long-lived part of the camera agent. One instance per process."""

    def __init__(
        self,
        cfg: AgentConfig,
        environ: Mapping[str, str],
        *,
        config_path: Path | None = None,
        source: str | None = None,
    ):
        self.cfg = cfg
        self.environ = environ
        self.config_path = config_path
        self.source = source  # the --source override, kept across reloads
        self.notifier = Notifier.from_env(environ)
        self.heartbeats = HeartbeatRegistry()
        self.registry = Registry()
        self.metrics = AgentMetrics(self.registry, __version__)
        self.readiness = Readiness()
        self.health: HealthServer | None = None
        self.watchdog: WatchdogPinger | None = None
        self.status: StatusReporter | None = None
        self.engine = None
        self.gallery: Gallery | None = None
        self.matcher: Matcher | None = None
        self.sink: EventSink | None = None
        self.cameras: list[CaptureWorker] = []
        self.pipeline: RecognitionPipeline | None = None
        self.api = None  # agent.api.server.ApiServer when cfg.api is set
        self.observer = FrameObserver() if cfg.console.enabled else None  # the console's view of the cameras
        self.hub = None  # agent.sync.hub.HubService when cfg.hub is set (needs cfg.api)
        self.syncer = None  # agent.sync.edge.EdgeSyncer when cfg.sync is set
        self._listener = None  # its MQTT announcement listener
        self._beats: list[Heartbeat] = []
        self._wake = threading.Event()
        self.lock = StateLock(cfg.state_dir, "run")

    # -- start ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        self.lock.acquire()  # before anything opens the outbox or the gallery
        for cam in cfg.cameras:  # a missing file or an empty folder is a config mistake: say so at once
            check_local_source(cam)
        if cfg.metrics.enabled:
            self.health = HealthServer(
                cfg.metrics, registry=self.registry, heartbeats=self.heartbeats, readiness=self.readiness
            )
            self.health.start()
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self.watchdog = WatchdogPinger(self.notifier, self.heartbeats, interval)
            self.watchdog.start()
        self.notifier.status("loading models")
        from agent.inference.engine import FaceEngine  # heavy import, after the endpoint answers

        self.engine = FaceEngine(cfg.engine)
        self.readiness.set("models_warmed", True, self.engine.model_id)
        self.notifier.status("loading gallery")
        self.gallery, self.matcher = self._open_gallery()
        self.readiness.set("gallery_loaded", True, cfg.recognition.group_id)
        sender_beat = None
        if cfg.publish.mqtt is not None:  # the MQTT sender thread beats every tick, connected or not
            age = cfg.recognition.heartbeat_max_age_s
            sender_beat = self.heartbeats.register("mqtt-sender", age).beat
        self.sink = build_sink(
            cfg.publish,
            [c.id for c in cfg.cameras],
            stats_provider=self._stats,
            sw_version=__version__,
            heartbeat=sender_beat,
        )
        self.sink.start()
        if cfg.publish.mqtt is not None:
            self.metrics.track_outbox(lambda: self.sink.stats()["outbox"]["depth"])
        self._publish_gallery_version()
        if cfg.sync is not None:
            self._start_sync(cfg)
        if cfg.api is not None:
            self._start_api(cfg)
        self._start_cameras(cfg)
        self.status = StatusReporter(self.notifier, self.status_text)
        self.status.start()
        self.notifier.ready(self.status_text())
        log.info(
            "face-agent %s running: %d camera(s), group %r",
            __version__,
            len(cfg.cameras),
            cfg.recognition.group_id,
        )

    def _open_gallery(self) -> tuple[Gallery, Matcher]:
        cfg, engine = self.cfg, self.engine
        thresholds = cfg.recognition.cosine_thresholds or engine.thresholds
        if not thresholds:
            raise ConfigError(
                f"model {engine.model_id} has no calibrated thresholds in the model manifest; run "
                "scripts/build_models.py calibrate, or set recognition.cosine_thresholds"
            )
        scores = ScoreMap(thresholds)
        gallery = open_gallery(cfg.gallery, engine)
        if not gallery.wait_ready(cfg.gallery.ready_timeout_s):
            gallery.close()
            raise ConfigError(
                f"gallery at {cfg.gallery.path} did not load within {cfg.gallery.ready_timeout_s} s"
            )
        group = cfg.recognition.group_id
        if cfg.recognition.create_group and group not in {g.group_id for g in gallery.list_groups()}:
            gallery.create_group(group_id=group)
            log.info("created gallery group %r", group)
        if gallery.store.fingerprint(group, engine.model_id)[0] == 0:  # else every face is silently unknown
            log.warning(
                "nobody is enrolled in group %r for %s: every face is reported unknown; enrol people with "
                "face-agent enroll DIR --group %s",
                group,
                engine.model_id,
                group,
            )
        return gallery, Matcher(gallery, engine.model_id, scores, cfg.gallery)

    def _start_api(self, cfg: AgentConfig) -> None:
        """The HTTP API shares the camera loop's engine and gallery (one model, one set of indexes)."""
        from agent.api import ApiServer, build_context
        from agent.errors import FatalError

        thresholds = cfg.recognition.cosine_thresholds or self.engine.thresholds
        api_cfg = (
            cfg.api
            if cfg.api.score_thresholds
            else cfg.api.model_copy(update={"score_thresholds": thresholds})
        )
        families = []
        if cfg.hub is not None:  # this device is also the hub of its groups (docs/sync.md)
            from agent.sync.hub import HubService

            self.hub = HubService(cfg.hub, self.gallery, api_cfg)
            families.append(self.hub.family)
        try:
            ctx = build_context(api_cfg, self.engine, self.gallery)
            mounts = [("/console", self._console(cfg, api_cfg, ctx))] if cfg.console.enabled else []
            if self.health is not None:  # /metrics, /healthz, /readyz on the API port too (metrics: loopback)
                mounts.append(("", self.health.routes(metrics_from_loopback_only=True)))
            self.api = ApiServer(api_cfg, ctx, families, mounts=mounts).start()
        except OSError as exc:
            if self.hub is not None:
                self.hub.stop()
                self.hub = None
            raise FatalError(
                f"cannot listen on {api_cfg.host}:{api_cfg.port}: {exc}; set another api.port in the config"
            ) from exc
        if self.hub is not None:
            self.hub.start()
            self.hub.register_metrics(self.registry)
        log.info("HTTP API on %s", self.api.url)

    def _console(self, cfg: AgentConfig, api_cfg, ctx):  # noqa: ANN001, ANN202 (agent.api / Starlette types)
        """The web console (docs/console.md) on the API's server, fed by the camera loop's observer."""
        from agent.api import load_secrets
        from agent.console import ConsoleDeps, build_console

        sync = (lambda: self.syncer.status() if self.syncer else {}) if cfg.sync is not None else None
        deps = ConsoleDeps(
            ctx=ctx,
            config=cfg.console,
            api=api_cfg,
            state_dir=cfg.state_dir,
            api_secrets=load_secrets(api_cfg),
            group_id=cfg.recognition.group_id,
            observer=self.observer,
            stats=lambda: self.pipeline.stats() if self.pipeline is not None else {},
            sink_stats=self.sink.stats if self.sink is not None else None,
            sync_status=sync,
            config_in_force=lambda: self.cfg.model_dump(mode="json"),
            on_gallery_change=self._publish_gallery_version,
        )
        return build_console(deps)  # ConfigError at start when nobody could log in

    def _stop_api(self, timeout: float) -> None:
        if self.api is not None:
            self.api.stop(timeout)
        if self.hub is not None:
            self.hub.stop(timeout)
            self.hub = None

    def _start_sync(self, cfg: AgentConfig) -> None:
        """Mirror the hub's granted groups into the gallery (docs/sync.md); pulls at once, then on every
        interval or announcement. Recognition does not wait for it: stale mirrors grant no access."""
        from agent.sync.client import HubClient, read_secret
        from agent.sync.edge import EdgeSyncer, engine_reembedder
        from agent.sync.listen import AnnouncementListener

        scfg = cfg.sync
        assert scfg is not None
        secret = read_secret(scfg, self.environ.get("CREDENTIALS_DIRECTORY"))
        client = HubClient(scfg, secret)
        engine = self.engine
        self.syncer = EdgeSyncer(scfg, self.gallery, engine.model_id, client, engine_reembedder(engine))
        self.syncer.start()
        self.metrics.track_sync(self.syncer.status)
        if scfg.announcements and cfg.publish.mqtt is not None:
            self._listener = AnnouncementListener(
                cfg.publish.mqtt, scfg.announce_prefix, f"{scfg.device_id}-sync", self.syncer.announced
            ).start()
        log.info("syncing groups from %s as device %s", client.hub, scfg.device_id)

    def _unsynced_mirror(self, group_id: str) -> bool:
        """Without a sync: section nothing keeps a mirror current: its groups grant no access."""
        from agent.gallery import mirror

        return mirror.state(self.gallery.store, group_id) is not None

    def _stop_sync(self, timeout: float) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self.syncer is not None:
            self.syncer.stop(timeout)
            self.syncer = None

    def _publish_gallery_version(self) -> None:
        """Retained gallery version of the recognition group and model: face count, newest face label and
        label sum (labels are never reused, so any add or delete changes it)."""
        group, model = self.cfg.recognition.group_id, self.engine.model_id
        count, newest, total = self.gallery.store.fingerprint(group, model)
        self.metrics.gallery_size.set(count)
        persons = len(self.gallery.list_persons(group))
        self.sink.publish_gallery_version(f"{count}-{newest}-{total}", persons=persons, faces=count)

    def _beat(self, name: str, max_age_s: float) -> Callable[[], None]:
        beat = self.heartbeats.register(name, max_age_s)
        self._beats.append(beat)
        return beat.beat

    def _start_cameras(self, cfg: AgentConfig) -> None:
        rcfg = cfg.recognition
        self.cameras = []
        for cam in cfg.cameras:
            dropped = self.metrics.frames_dropped
            frames = self.metrics.frames
            worker = CaptureWorker(
                cam,
                open_source(cam),
                wake=self._wake,
                beat=self._beat(f"camera-{cam.id}", rcfg.heartbeat_max_age_s),
                on_drop=lambda camera, reason, d=dropped: d.labels(camera, reason).inc(),
                on_frame=lambda camera, f=frames: f.labels(camera).inc(),
            )
            self.cameras.append(worker)
            self.metrics.track_queue(f"frames-{cam.id}", lambda w=worker: w.slot.depth)
        self.pipeline = RecognitionPipeline(
            self.engine,
            self.matcher,
            rcfg,
            self.cameras,
            self.sink,
            wake=self._wake,
            snapshots=cfg.publish.snapshots and cfg.publish.mqtt is not None,
            metrics=self.metrics,
            heartbeat=self._beat,
            stale=self.syncer.is_stale if self.syncer is not None else self._unsynced_mirror,
            observer=self.observer,
            confirm_far_level=cfg.publish.access.min_far_level if cfg.publish.access.enabled else 0,
        )
        self.metrics.track_queue("events", lambda p=self.pipeline: p.dispatcher.depth)
        self.pipeline.start()
        for worker in self.cameras:
            worker.start()

    # -- running -------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every source was finite and is done, and its events are published (an API keeps serving)."""
        return self.api is None and self.pipeline is not None and self.pipeline.done.is_set()

    def status_text(self) -> str:
        if self.pipeline is None:
            return "starting"
        stats = self.pipeline.stats()
        cams = ", ".join(f"{k} {v['state']} {v['fps']} fps" for k, v in stats["cameras"].items())
        ev = stats["events"]
        faces = self._gallery_faces()
        text = f"{cams}; gallery {faces} faces; events {ev['published']} (dropped {ev['dropped']})"
        if self.syncer is not None:
            s = self.syncer.status()
            lag = "never" if s["lag_s"] is None else f"{s['lag_s']:.0f} s ago"
            text += f"; sync {s['state']}, last {lag}, {s['ops_behind']} ops behind"
        return text

    def _gallery_faces(self) -> int:
        """Faces of the recognition group and model in the loaded index, the ones recognition matches
        against (also face_agent_gallery_size). Not SQLite's count: faces another process enrolled are
        there before a reload brings them into the index."""
        idx = self.gallery.index(self.cfg.recognition.group_id, self.engine.model_id)
        faces = idx.stats()["live"] if idx is not None else 0
        self.metrics.gallery_size.set(faces)
        return faces

    def _stats(self) -> dict[str, object]:
        stats: dict[str, object] = {} if self.pipeline is None else dict(self.pipeline.stats())
        if self.syncer is not None:
            stats["sync"] = self.syncer.status()
        return stats

    def reload(self) -> None:
        """SIGHUP: re-read the config and the gallery (faces enrolled by another process, e.g. `face-agent
        enroll`, are in SQLite; reopening reconciles the indexes with it); restart cameras, recognition and
        the API on them. A bad config file changes nothing."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: no --config file to re-read")
            return
        try:
            new = load_agent_config(self.config_path, self.environ, source=self.source)
            for cam in new.cameras:
                check_local_source(cam)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc.message)
            return
        self.notifier.reloading()
        for section in ("engine", "gallery", "publish", "metrics", "state_dir", "api"):
            if getattr(new, section) != getattr(self.cfg, section):
                log.warning("config section %r changed: it takes effect at the next restart", section)
        if new.log != self.cfg.log:
            setup_logging(new.log, self.environ)
        self._stop_cameras(self.cfg.stop_timeout_s)
        self._stop_api(self.cfg.stop_timeout_s)
        self.cfg = self.cfg.model_copy(
            update={"cameras": new.cameras, "recognition": new.recognition, "log": new.log}
        )
        self.readiness.set("gallery_loaded", False, "reloading")
        self._stop_sync(self.cfg.stop_timeout_s)  # it holds the gallery being reopened
        self.gallery.close(self.cfg.stop_timeout_s)
        self.gallery, self.matcher = self._open_gallery()
        self.readiness.set("gallery_loaded", True, self.cfg.recognition.group_id)
        self._publish_gallery_version()
        if self.cfg.sync is not None:
            self._start_sync(self.cfg)
        if self.cfg.api is not None:
            self._start_api(self.cfg)
        self._start_cameras(self.cfg)
        self.notifier.ready(self.status_text())
        log.info("reloaded: %d camera(s)", len(self.cfg.cameras))

    # -- stop ----------------------------------------------------------------------------------------------

    def _stop_cameras(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.cameras:
            if not worker.stop(max(0.1, deadline - time.monotonic())):
                log.warning("camera %s did not stop in time (blocked in its driver)", worker.cfg.id)
        if self.pipeline is not None and not self.pipeline.stop(max(0.5, deadline - time.monotonic())):
            log.warning("recognition did not stop within %.1f s; queued events stay unpublished", timeout)
        for beat in self._beats:
            beat.close()
        self._beats = []

    def summary(self) -> str:
        """One line for the end of a run: what was seen and where the events went."""
        if self.pipeline is None:
            return "summary: stopped before recognition started"
        stats = self.pipeline.stats()
        cams = "; ".join(
            f"{name}: {c['processed']} frames, {c['faces']} faces, {c['known'] + c['upgrades']} recognized, "
            f"{c['unknown']} unknown"
            for name, c in stats["cameras"].items()
        )
        ev = stats["events"]
        text = f"summary: {cams}; events {ev['published']} published, {ev['dropped']} dropped"
        left = getattr(self.sink, "left_in_outbox", None)
        return text + (f", {left} left in the outbox" if left is not None else "")

    def stop(self, reason: str = "stop requested") -> None:
        log.info("stopping: %s", reason)
        self.notifier.stopping()
        timeout = self.cfg.stop_timeout_s
        if self.status is not None:
            self.status.stop()
        self._stop_api(timeout)
        self._stop_cameras(timeout)
        self._stop_sync(timeout)
        for name, part in (("sink", self.sink), ("gallery", self.gallery)):
            if part is not None:
                try:
                    part.close(timeout)
                except AgentError as exc:
                    log.error("closing the %s failed: %s", name, exc)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.health is not None:
            self.health.stop()
        log.info(self.summary())
        self.lock.release()
        log.info("stopped")


def run_agent(
    cfg: AgentConfig,
    environ: Mapping[str, str],
    *,
    config_path: Path | None = None,
    source: str | None = None,
) -> int:
    """Run until SIGTERM/SIGINT or until every (finite) source is done. Returns the exit code."""
    setup_logging(cfg.log, environ)
    stop, reload = threading.Event(), threading.Event()
    received: list[str] = []

    def on_stop(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, lambda *_: reload.set()),
    }
    app = AgentApp(cfg, environ, config_path=config_path, source=source)
    try:
        app.start()
        while not stop.is_set() and not app.finished:
            if reload.is_set():
                reload.clear()
                app.reload()
            stop.wait(0.2)
        return 0
    finally:
        if received:
            reason = f"{received[0]} received"
        elif app.finished:
            reason = "every source finished"
        else:
            reason = "start-up failed or an error occurred"
        app.stop(reason)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
