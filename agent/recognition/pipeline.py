"""The recognition loop: frames of every camera -> detect -> quality gate -> embed -> match -> track -> event.

Liveness runs inside the tracker (one `TrackLiveness` per track, see agent/recognition/tracking.py) at the
camera's
`liveness_level` (`CameraConfig.liveness_level`, else `RecognitionConfig.liveness_level`); its state travels
in every event and each published event is counted in `face_agent_liveness_total{camera,result}`. A camera
with `liveness_challenge` (HIGH only) also publishes its tracks' challenges for the kiosk screen
(agent/recognition/challenge.py), through the same dispatcher and in order with the events.

Recognition threads (`RecognitionConfig.workers`) share one FaceEngine and one gallery Matcher; each owns a
fixed subset of the cameras, so one camera's frames are always processed in order by one tracker. Events go
through a bounded queue to one dispatcher thread, so a slow sink (fsync of the MQTT outbox) never stalls
recognition; an event that finds the queue full is dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from agent.capture.worker import CaptureWorker, Frame
from agent.config import CameraConfig, RecognitionConfig
from agent.errors import AgentError, ConfigError, TransientError
from agent.gallery.matcher import FAR_SCORES, Candidate, Matcher, ScoreMap
from agent.gallery.thresholds import RequiredScore, StrangerThresholds, engine_thresholds, person_rule
from agent.gates.depth import DepthCheck, depth_check
from agent.gates.ir import ir_check
from agent.inference.mesh import open_face_mesh
from agent.publish.challenge import ChallengeMessage
from agent.publish.payloads import RecognitionEvent
from agent.publish.sink import EventSink
from agent.recognition.challenge import ChallengeNotice, Chooser
from agent.recognition.dispatch import EventDispatcher, LatencyLog
from agent.recognition.observe import FrameObserver
from agent.recognition.tracking import (
    DepthState,
    EyeMeter,
    FaceTracker,
    LivenessState,
    Observation,
    TrackerSettings,
    TrackEvent,
    liveness_uses_blinks,
)
from agent.types import Box, Face

log = logging.getLogger(__name__)
QUALITY_ORDER = ("HIGH", "NORMAL", "LOW")


def _quality_gate():
    """The quality gate functions when agent/gates/quality.py provides them, else None (gate not run)."""
    try:
        from agent.gates.quality import evaluate_quality, measure_quality
    except ImportError:
        return None
    return measure_quality, evaluate_quality


# The tracker's look-alike gate (`track_min_similarity`) is a cosine, and cosines mean different things per
# model and space: different people score ~0.1 on FaceNet but ~0.8 on the dlib ResNet. Unless the operator
# sets one, it is the space's cosine at pair FAR 1e-2 (manifest far_curve): a different person stepping into a
# track's place continues it at most once in 100 (0.39 on FaceNet, 0.908 on the INT8 dlib ResNet, 0.911 with
# flip, whose stranger after the Hamilton clip's scene cut scores 0.905 against Lin-Manuel's track); frames of
# one person score far above it. A space without that point keeps the older rule: the same distance from 1,
# relative to its FAR 1e-3 cosine, as 0.35 is on FaceNet (FAR 1e-3 at 0.511).
TRACK_GATE_FAR = 1e-2
TRACK_GATE_REACH = (1.0 - 0.35) / (1.0 - 0.511)


def track_min_similarity(
    cfg: RecognitionConfig, scores: ScoreMap, curve: StrangerThresholds | None = None
) -> float:
    """The cosine a face needs to continue a track: the configured one if set, else scaled to the space."""
    if cfg.track_min_similarity is not None:
        return cfg.track_min_similarity
    if curve is not None and curve.largest_far >= TRACK_GATE_FAR:
        return curve.cosine_at(TRACK_GATE_FAR)
    far_1e3 = float(scores.cosine(FAR_SCORES["1e-3"]))
    return float(np.clip(1.0 - TRACK_GATE_REACH * (1.0 - far_1e3), -1.0, 1.0))


def confirm_score(level: int, anchors: dict[str, float]) -> float | None:
    """The score an access policy's `min_far_level` needs (the anchor of FAR 1e-level), or None (no policy,
    or level 0). A level between the anchors takes the next stricter one: never less than the policy."""
    if level <= 0:
        return None
    levels = {int(far.split("e-")[1]): at for far, at in anchors.items()}
    stricter = [n for n in levels if n >= level]
    return levels[min(stricter)] if stricter else None


def far_level(score: float, anchors: dict[str, float]) -> int:
    """N when `score` meets the 1-in-10^N FAR threshold (strictest met), 0 when none."""
    met = [int(far.split("e-")[1]) for far, at in anchors.items() if score >= at]
    return max(met, default=0)


def _liveness_result(live: LivenessState) -> str:
    """Metric label: passed / failed (the camera's level) / no_result (not enough frames yet)."""
    if live.passed:
        return "passed"
    return "no_result" if live.score is None else "failed"


def _liveness_fields(live: LivenessState | None) -> dict[str, object]:
    """RecognitionEvent liveness fields; all None when liveness is off on the camera."""
    if live is None:
        return {}
    score = round(live.score, 3) if live.score is not None else None
    return {
        "liveness": score,
        "liveness_level": live.level,
        "liveness_reasons": live.reasons,
        "liveness_challenge": live.challenge,
    }


def _depth_fields(depth: DepthState | None) -> dict:
    """The track's sensor evidence (depth or infrared: `depth_sensor`) as event fields."""
    if depth is None:
        return {}
    return {
        "depth_sensor": depth.sensor,
        "depth_required": depth.required,
        "depth_passed": depth.passed,
        "depth_relief_mm": depth.relief_mm,
        "depth_ir_level": depth.level,
        "depth_reasons": depth.reasons,
    }


def challenge_message(camera_id: str, notice: ChallengeNotice, clock: float, wall: float) -> ChallengeMessage:
    """The published form of a tracker notice; `wall` is the Unix time of tracker clock `clock`."""
    return ChallengeMessage(
        camera_id=camera_id,
        track_id=notice.track_id,
        challenge_id=notice.challenge_id,
        instruction=notice.instruction,
        text=notice.text,
        state=notice.state,
        issued_at=wall + notice.issued_clock - clock,
        deadline=wall + notice.deadline_clock - clock,
        at=wall + notice.clock - clock,
        person_id=notice.person_id,
        step=notice.step,
        steps=notice.steps,
        reason=notice.reason,
    )


def fallback_weight(face: Face) -> float:
    """Fusion weight without the quality gate: detector confidence, scaled down for small faces."""
    side = min(face.box.width, face.box.height)
    return float(np.clip(face.score, 0.0, 1.0) * min(1.0, side / 112.0))


@dataclass
class _Camera:
    worker: CaptureWorker
    tracker: FaceTracker
    processed: int = 0
    faces: int = 0  # detected at or above the camera's min_face_px
    fps: float = 0.0
    last_t: float = field(default=0.0)


def _cooldown(base: TrackerSettings, cam: CameraConfig) -> float:
    """A folder of photos is a set of separate appearances: a person in two photos is reported twice."""
    if cam.cooldown_s is not None:
        return cam.cooldown_s
    return 0.0 if cam.resolved_kind == "folder" else base.cooldown_s


class RecognitionPipeline:
    """Recognition threads over the capture workers, plus the event dispatcher."""

    def __init__(
        self,
        engine,
        matcher: Matcher,
        cfg: RecognitionConfig,
        cameras: Sequence[CaptureWorker],
        sink: EventSink,
        *,
        wake: threading.Event,
        snapshots: bool = False,
        metrics=None,
        heartbeat: Callable[[str, float], Callable[[], None]] | None = None,
        challenge_chooser: Chooser | None = None,
        stale: Callable[[str], bool] | None = None,
        observer: FrameObserver | None = None,
        confirm_far_level: int = 0,
    ) -> None:
        """`challenge_chooser` forces the challenge instructions (tests); None: drawn with `secrets`.
        `confirm_far_level`: the access policy's min_far_level (0: no policy): a known track below it gets a
        follow-up event once it reaches it (agent/recognition/tracking.py).
        `stale(group_id)`: True when a mirrored group must not grant access (agent/sync/edge.py).
        `observer`: gets every analysed frame's faces and decisions (the console); None costs nothing."""
        self.cfg = cfg
        self.observer = observer
        self._stale = stale
        self._engine = engine
        self._matcher = matcher
        self._wake = wake
        self._snapshots = snapshots
        self._metrics = metrics
        self._gate = _quality_gate()
        if self._gate is None:
            log.warning("quality gate (agent/gates/quality.py) not available: faces are not quality-checked")
        beat = heartbeat or (lambda name, age: lambda: None)
        observe = None
        if metrics is not None:
            observe = lambda stage, s: metrics.stage_latency.labels(stage).observe(s)  # noqa: E731
        self.latency = LatencyLog(observe)
        self.match_errors = 0
        self.frame_errors = 0
        curve = engine_thresholds(engine, cfg.cosine_thresholds)
        self._persons = person_rule(engine, cfg.person_rule, curve, cfg.cosine_thresholds)
        log.info("recognition: %s", "mean rule (per person)" if self._persons else "max rule (per face)")
        self.required_score = RequiredScore(
            matcher,
            cfg.group_id,
            rate=cfg.max_stranger_rate,
            min_score=cfg.min_score,
            thresholds=None if cfg.min_score is not None else curve,
            log=log,
            per_person=self._persons is not None,
            person_curves=self._persons,
        )
        settings = TrackerSettings(
            min_score=cfg.min_score if cfg.min_score is not None else 100.0,  # see required_score
            iou_threshold=cfg.iou_threshold,
            track_timeout_s=cfg.track_timeout_s,
            max_missed_frames=cfg.max_missed_frames,
            unknown_after_frames=cfg.unknown_after_frames,
            min_track_frames=min(cfg.min_track_frames, cfg.unknown_after_frames),
            fusion_frames=cfg.fusion_frames,
            upgrade_unknown=cfg.upgrade_unknown,
            cooldown_s=cfg.cooldown_s,
            min_similarity=track_min_similarity(cfg, matcher.scores, curve),
            confirm_score=confirm_score(confirm_far_level, matcher.scores.thresholds()),
        )
        levels = [self._liveness_level(w) for w in cameras]
        self._shared_mesh = False  # the blink cue reads the alignment's mesh (set by _eye_meter)
        eyes = self._eye_meter(engine, levels)
        self.cameras = [
            _Camera(
                w,
                FaceTracker(
                    self._tracker_settings(settings, w, level, eyes),
                    self._match,
                    eyes,
                    challenge_chooser,
                    self.required_score,
                ),
            )
            for w, level in zip(cameras, levels, strict=True)
        ]
        groups = [self.cameras[i :: cfg.workers] for i in range(min(cfg.workers, len(self.cameras)))]
        self._stop = threading.Event()
        self.done = threading.Event()
        self._workers_left = len(groups)
        self._lock = threading.Lock()
        self.dispatcher = EventDispatcher(
            sink, cfg.event_queue_size, self.latency, beat("event-dispatch", cfg.heartbeat_max_age_s)
        )
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(group, beat(f"recognition-{i}", cfg.heartbeat_max_age_s)),
                name=f"recognition-{i}",
                daemon=True,
            )
            for i, group in enumerate(groups)
        ]

    def _eye_meter(self, engine, levels: list[str]) -> EyeMeter | None:  # noqa: ANN001 (FaceEngine)
        """The face mesh, opened only when some camera's liveness level uses blinks (it costs memory and
        about 2 ms per face); shared by every camera (sessions are thread-safe)."""
        if not self.cfg.blink.enabled or not any(liveness_uses_blinks(lv) for lv in levels):
            return None
        aligning = getattr(engine, "mesh", None)  # the embedder's alignment mesh, when it runs one
        self._shared_mesh = aligning is not None and aligning.info.name == self.cfg.blink.model
        mesh = aligning if self._shared_mesh else open_face_mesh(engine.config, self.cfg.blink.model)
        log.info("blink cue: %s on %s", mesh.info.model_id, engine.config.runtime.kind)
        min_prob = self.cfg.blink.min_face_probability
        return lambda pixels, face: mesh.eye_openness(pixels, face, min_prob)

    def _tracker_settings(
        self, base: TrackerSettings, worker: CaptureWorker, level: str, eyes: EyeMeter | None
    ) -> TrackerSettings:
        blink = self.cfg.blink if eyes is not None and liveness_uses_blinks(level) else None
        challenge = worker.cfg.liveness_challenge
        if challenge is not None and level != "HIGH":  # AgentConfig refuses it too; this guards direct use
            raise ConfigError(
                f"camera {worker.cfg.id}: liveness_challenge needs liveness level HIGH, not {level}",
                code="invalid_challenge_level",
            )
        cooldown = _cooldown(base, worker.cfg)
        sensor = worker.cfg.depth or worker.cfg.ir  # the camera's liveness sensor (config: one at most)
        return replace(
            base,
            liveness_level=level,
            blink=blink,
            challenge=challenge,
            cooldown_s=cooldown,
            depth=sensor is not None,
            depth_required=sensor is not None and sensor.require,
            sensor="ir" if worker.cfg.ir is not None else "depth",
        )

    def _liveness_level(self, worker: CaptureWorker) -> str:
        """The camera's own level when it sets one, else the recognition default."""
        own = worker.cfg.liveness_level
        return own if own is not None else self.cfg.liveness_level

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.dispatcher.start()
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop recognition, then publish the queued events. Capture should be stopped first."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        ok = all(not t.is_alive() for t in self._threads)
        return self.dispatcher.stop(max(0.1, deadline - time.monotonic())) and ok

    def stats(self) -> dict[str, object]:
        return {
            "cameras": {
                c.worker.cfg.id: {
                    **c.worker.stats(),
                    "processed": c.processed,
                    "faces": c.faces,
                    "fps": round(c.fps, 2),
                    "tracks": c.tracker.active,
                    **c.tracker.counters,
                }
                for c in self.cameras
            },
            "events": {
                "published": self.dispatcher.published,
                "dropped": self.dispatcher.dropped,
                "failed": self.dispatcher.failed,
                "queued": self.dispatcher.depth,
            },
            "match_errors": self.match_errors,
            "frame_errors": self.frame_errors,
            "required_score": round(self.required_score(), 2),  # what a match needs now (group size, rate)
            "latency": self.latency.summary(),
        }

    # -- recognition thread ------------------------------------------------------------------------------

    def _run(self, group: list[_Camera], beat: Callable[[], None]) -> None:
        try:
            while not self._stop.is_set():
                beat()
                self._wake.clear()  # before scanning: a frame put after this sets it again, none is missed
                busy = False
                for cam in group:
                    frame = cam.worker.slot.take()
                    if frame is not None:
                        busy = True
                        self._process_safely(cam, frame)
                if busy:
                    continue
                if all(c.worker.finished.is_set() and c.worker.slot.depth == 0 for c in group):
                    for cam in group:
                        end = self._clock_end(cam)
                        self._emit(cam, cam.tracker.flush(end), None)
                        self._emit_challenges(cam, cam.tracker.pop_challenges(), end, None)
                    break
                self._wake.wait(0.05)
        except Exception:  # visible in the journal; the heartbeat goes stale and the watchdog restarts us
            log.exception("recognition thread crashed")
            raise
        finally:
            with self._lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last and not self._stop.is_set():
                self.dispatcher.stop(self.cfg.heartbeat_max_age_s)
                self.done.set()

    def _process_safely(self, cam: _Camera, frame: Frame) -> None:
        try:
            self._process(cam, frame)
        except AgentError as exc:  # e.g. a frame the engine refuses, the group deleted meanwhile
            self.frame_errors += 1
            if self.frame_errors == 1 or self.frame_errors % 1000 == 0:
                log.error(
                    "camera %s: frame skipped (%d so far): %s", cam.worker.cfg.id, self.frame_errors, exc
                )

    @staticmethod
    def _clock_end(cam: _Camera) -> float:
        return cam.tracker.last_clock if cam.tracker.last_clock is not None else time.monotonic()

    def _process(self, cam: _Camera, frame: Frame) -> None:
        t0 = time.perf_counter()
        faces = self._engine.detect(frame.pixels, self.cfg.max_faces)
        min_px = cam.worker.cfg.min_face_px
        faces = [f for f in faces if min(f.box.width, f.box.height) >= min_px]
        cam.faces += len(faces)
        t1 = time.perf_counter()
        self.latency.add("detect", t1 - t0)
        graded = [self._grade(frame.pixels, f) for f in faces]
        t2 = time.perf_counter()
        self.latency.add("quality", t2 - t1)
        usable = [f for f, g in zip(faces, graded, strict=True) if g[1]]
        embedded = self._engine.embed(frame.pixels, usable) if usable else []
        vectors = {id(e.face): e.vector for e in embedded}
        # The alignment's mesh stands in for the blink cue's own run when it is the same model.
        meshes = {id(e.face): e.mesh for e in embedded} if self._shared_mesh else {}
        t3 = time.perf_counter()
        if usable:
            self.latency.add("embed", t3 - t2)
        # Only embedded faces' sensor evidence counts for a track (FaceTracker._count_depth): check those.
        depth = self._sensor_checks(cam.worker.cfg, frame, usable)
        observations = [
            Observation(
                box=f.box,
                vector=vectors.get(id(f)),
                weight=weight,
                usable=ok,
                quality=score,
                quality_level=level,
                crop=self._crop(frame.pixels, f.box) if self._snapshots else None,
                face=f,
                origin=frame.origin,
                depth=depth.get(id(f)),
                mesh=meshes.get(id(f)),
            )
            for f, (weight, ok, score, level) in zip(faces, graded, strict=True)
        ]
        clock = frame.media_time if frame.media_time is not None else frame.captured_mono
        events = cam.tracker.update(observations, clock, frame.pixels)
        if self.observer is not None:
            self.observer.observe(cam.worker.cfg.id, frame, observations, cam.tracker, events)
        self.latency.add("track", time.perf_counter() - t3)  # includes the gallery searches and liveness
        if cam.tracker.liveness_on and observations:
            self.latency.add("liveness", cam.tracker.liveness_seconds)
        notices = cam.tracker.pop_challenges()
        # The kiosk greets, then shows the instruction; an outcome precedes the follow-up it allowed.
        self._emit_challenges(cam, [n for n in notices if not n.follows_event], clock, frame)
        self._emit(cam, events, frame)
        self._emit_challenges(cam, [n for n in notices if n.follows_event], clock, frame)
        self.latency.add("capture_to_processed", time.monotonic() - frame.captured_mono)
        self._count_fps(cam, frame)

    def _grade(self, pixels: np.ndarray, face: Face) -> tuple[float, bool, float | None, str | None]:
        """(fusion weight, usable, quality score, strongest level passed) of one face."""
        if self._gate is None:
            return fallback_weight(face), True, None, None
        measure, evaluate = self._gate
        try:
            measures = measure(pixels, face)
        except AgentError as exc:  # a face the gate cannot measure cannot be trusted to decide either
            log.debug("quality gate refused a face: %s", exc)
            return fallback_weight(face), False, None, None
        level, score = "NONE", None
        for candidate in QUALITY_ORDER:
            report = evaluate(measures, candidate)
            score = report.score if score is None else score
            if report.passed:
                level = candidate
                break
        required = self.cfg.quality_level
        ok = required == "NONE" or ("NONE", "LOW", "NORMAL", "HIGH").index(level) >= (
            "NONE",
            "LOW",
            "NORMAL",
            "HIGH",
        ).index(required)
        score = float(np.clip(score if score is not None else 0.0, 0.0, 1.0))
        return max(score, 1e-3), ok, score, level

    def _match(self, vector: np.ndarray) -> Candidate | None:
        t0 = time.perf_counter()
        try:
            if self._persons is not None:
                found = self._matcher.search_mean(self.cfg.group_id, vector, self._persons)
            else:
                found = self._matcher.search(self.cfg.group_id, vector, top_k=1, min_score=0.0)
        except TransientError as exc:  # index still loading or busy: this frame decides nothing
            self.match_errors += 1
            log.debug("gallery search failed: %s", exc)
            return None
        finally:
            self.latency.add("match", time.perf_counter() - t0)
        return found[0] if found else None

    def _crop(self, pixels: np.ndarray, box: Box) -> np.ndarray:
        m = self.cfg.snapshot_margin
        h, w = pixels.shape[:2]
        x1 = int(max(0, box.x1 - m * box.width))
        y1 = int(max(0, box.y1 - m * box.height))
        x2 = int(min(w, box.x2 + m * box.width))
        y2 = int(min(h, box.y2 + m * box.height))
        return pixels[y1:y2, x1:x2].copy()

    def _emit(self, cam: _Camera, events: list[TrackEvent], frame: Frame | None) -> None:
        offset = frame.offset if frame is not None else (0, 0)
        for ev in events:
            event = self._event(cam.worker.cfg.id, ev, frame, offset)
            snapshot = None
            if self._snapshots and ev.observation.crop is not None and ev.observation.crop.size:
                ok, buf = cv2.imencode(".jpg", ev.observation.crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
                snapshot = buf.tobytes() if ok else None
            result = "known" if ev.known else "unknown"
            if self._metrics is not None:
                self._metrics.recognitions.labels(result).inc()
                if ev.liveness is not None:
                    self._metrics.liveness.labels(cam.worker.cfg.id, _liveness_result(ev.liveness)).inc()
            mono = frame.captured_mono if frame is not None else time.monotonic()
            self.dispatcher.submit(event, snapshot, mono)

    def _emit_challenges(
        self, cam: _Camera, notices: list[ChallengeNotice], clock: float, frame: Frame | None
    ) -> None:
        wall = frame.captured_at if frame is not None else time.time()
        mono = frame.captured_mono if frame is not None else time.monotonic()
        for notice in notices:
            self.dispatcher.submit(challenge_message(cam.worker.cfg.id, notice, clock, wall), None, mono)

    def _event(
        self, camera_id: str, ev: TrackEvent, frame: Frame | None, offset: tuple[int, int]
    ) -> RecognitionEvent:
        obs, cand = ev.observation, ev.candidate
        box = Box(
            obs.box.x1 + offset[0], obs.box.y1 + offset[1], obs.box.x2 + offset[0], obs.box.y2 + offset[1]
        )
        common = dict(
            camera_id=camera_id,
            captured_at=frame.captured_at if frame is not None else time.time(),
            box=box,
            model_id=self._matcher.model_id,
            quality=obs.quality,
            quality_level=obs.quality_level,
            track_id=ev.track_id,
            source_file=obs.origin[0] if obs.origin is not None else None,
            source_frame=obs.origin[1] if obs.origin is not None else None,
            score=round(float(cand.score), 2) if cand is not None else None,
            **_liveness_fields(ev.liveness),
            **_depth_fields(ev.depth),
        )
        if not ev.known or cand is None:
            return RecognitionEvent(**common)
        return RecognitionEvent(
            **common,
            person_id=cand.outer_id,
            user_info=cand.user_info or None,
            group_id=cand.group_id,
            far_level=far_level(cand.score, self._matcher.scores.thresholds()),
            gallery_stale=bool(self._stale is not None and self._stale(cand.group_id)),
        )

    def _sensor_checks(self, cfg: CameraConfig, frame: Frame, faces: Sequence[Face]) -> dict[int, DepthCheck]:
        """Each face's evidence from the camera's depth or infrared sensor, by id(face); {} without one."""
        if cfg.depth is not None:
            return {id(f): depth_check(f, frame.depth, cfg.depth) for f in faces}
        if cfg.ir is not None:
            return {id(f): ir_check(f, frame.ir, cfg.ir, self._engine.detect) for f in faces}
        return {}

    def _count_fps(self, cam: _Camera, frame: Frame) -> None:
        cam.processed += 1
        now = time.monotonic()
        if cam.last_t:
            inst = 1.0 / max(now - cam.last_t, 1e-6)
            cam.fps = inst if cam.fps == 0 else 0.9 * cam.fps + 0.1 * inst  # smoothed over ~10 frames
        cam.last_t = now
        if self._metrics is not None:
            self._metrics.fps.labels(cam.worker.cfg.id).set(cam.fps)
