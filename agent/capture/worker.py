"""One capture thread per camera: read, cap the rate, rotate, crop the ROI, hand over in a one-frame slot.

The slot holds only the newest frame. For a live source (camera, stream, file at native speed) a frame that
was not taken before the next one arrives is dropped and counted ("stale"): recognition always works on the
present. A non-live source (file or folder read as fast as possible) waits instead, so none is lost.
A source that fails, stalls or vanishes is closed and reopened with capped exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from agent.capture.sources import FrameSource, RawFrame
from agent.config import CameraConfig
from agent.errors import AgentError, TransientError
from agent.ops.log import StateLog
from agent.types import DepthFrame, IrFrame

log = logging.getLogger(__name__)

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclass(frozen=True)
class Frame:
    """A pre-processed frame. `offset` is where `pixels` (the ROI) starts in the rotated full frame."""

    camera_id: str
    seq: int
    pixels: np.ndarray
    captured_at: float  # wall clock (Unix seconds), for events
    captured_mono: float  # monotonic clock, for latency measurements
    offset: tuple[int, int] = (0, 0)
    media_time: float | None = None  # position in a file read faster than real time (the tracker's clock)
    origin: tuple[str, int] | None = None  # files and folders: (file name, frame index in it), for events
    depth: DepthFrame | None = None  # depth cameras: depth registered to `pixels` (same rotation and ROI)
    ir: IrFrame | None = None  # infrared pairs: IR registered to `pixels` (same rotation and ROI)


class LatestFrameSlot:
    """A one-frame mailbox. `put` replaces an untaken frame (counted in `stale`); `take` empties it."""

    def __init__(self, wake: threading.Event | None = None) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._wake = wake
        self.stale = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.stale += 1
            self._frame = frame
            self._cond.notify_all()
        if self._wake is not None:
            self._wake.set()

    def put_wait(
        self, frame: Frame, stop: threading.Event, beat: Callable[[], None], poll_s: float = 0.1
    ) -> bool:
        """Wait until the slot is empty, then put (no drop). False if `stop` was set meanwhile."""
        with self._cond:
            while self._frame is not None:
                if stop.is_set():
                    return False
                beat()
                self._cond.wait(poll_s)
            self._frame = frame
            self._cond.notify_all()
        if self._wake is not None:
            self._wake.set()
        return True

    def take(self, timeout: float = 0.0) -> Frame | None:
        with self._cond:
            if self._frame is None and timeout > 0:
                self._cond.wait_for(lambda: self._frame is not None, timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    @property
    def depth(self) -> int:
        return 0 if self._frame is None else 1


def preprocess(pixels: np.ndarray, cfg: CameraConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Rotate, then crop the region of interest. Returns the pixels and the crop offset."""
    if cfg.rotate:
        pixels = cv2.rotate(pixels, _ROTATIONS[cfg.rotate])
    if cfg.roi is None:
        return pixels, (0, 0)
    h, w = pixels.shape[:2]
    x, y, rw, rh = cfg.roi
    x0, y0 = int(round(x * w)), int(round(y * h))
    x1, y1 = max(x0 + 1, int(round((x + rw) * w))), max(y0 + 1, int(round((y + rh) * h)))
    return np.ascontiguousarray(pixels[y0:y1, x0:x1]), (x0, y0)


class Backoff:
    """min, 2*min, 4*min ... capped at max; reset after a success."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self._next = min_s

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s


class CaptureWorker:
    """Runs one source in its own thread and offers the newest pre-processed frame in `slot`."""

    def __init__(
        self,
        cfg: CameraConfig,
        source: FrameSource,
        *,
        wake: threading.Event | None = None,
        beat: Callable[[], None] | None = None,
        on_drop: Callable[[str, str], None] | None = None,
        on_frame: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.slot = LatestFrameSlot(wake)
        self._beat = beat or (lambda: None)
        self._on_drop = on_drop or (lambda camera, reason: None)
        self._on_frame = on_frame or (lambda camera: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.finished = threading.Event()  # a finite source reached its end (and loop is off)
        self.frames = 0
        self.dropped_fps = 0
        self.reconnects = 0
        self.failures = 0
        self.state = "idle"
        self._states = StateLog(log, max_keys=4)  # one line per state transition, not per failed read
        self.last_error: str | None = None
        self._seq = 0
        self._last_accept: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"capture {self.cfg.id} already started")
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.cfg.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to end; True when it did within `timeout` (a read blocked in a driver may not)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stale(self) -> int:
        return self.slot.stale

    def stats(self) -> dict[str, object]:
        return {
            "state": self.state,
            "frames": self.frames,
            "dropped_stale": self.slot.stale,
            "dropped_fps": self.dropped_fps,
            "reconnects": self.reconnects,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        level = logging.WARNING if state in ("lost", "unavailable") else logging.INFO
        self._states.change(f"camera/{self.cfg.id}", state, detail, level=level)

    # -- thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        opened = False
        try:
            while not self._stop.is_set():
                self._beat()
                if not opened:
                    opened = self._open()
                    continue
                if not self._pump():
                    opened = False
        except Exception:  # a bug must not kill capture silently; the heartbeat then goes stale
            log.exception("capture thread %s crashed", self.cfg.id)
            self._set_state("crashed")
        finally:
            self.source.close()

    def _open(self) -> bool:
        try:
            self.source.open()
        except AgentError as exc:
            self._fail(exc, "unavailable")
            return False
        self._set_state("connected")
        return True

    def _fail(self, exc: AgentError, state: str) -> None:
        self.failures += 1
        self.last_error = exc.message
        self.source.close()
        delay = self._backoff.next()
        self._set_state(state, f"{exc.message}; retry in {delay:.1f} s")
        self.reconnects += 1
        deadline = time.monotonic() + delay
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._beat()  # waiting for a camera to come back is healthy, not a hang
            self._stop.wait(min(left, 1.0))  # interruptible: stop() does not wait for the backoff

    def _pump(self) -> bool:
        """Read and hand over one frame. False when the source must be reopened."""
        try:
            raw = self.source.read()
        except TransientError as exc:
            self._fail(exc, "lost")
            return False
        now = time.monotonic()
        if raw is None:
            if self.cfg.loop:
                self.source.close()
                return False  # reopened at the next turn, from the start
            self._set_state("finished")
            self.finished.set()
            self._stop.set()
            return True
        self._backoff.reset()
        if self._rate_limited(raw, now):
            self.dropped_fps += 1
            self._on_drop(self.cfg.id, "fps_cap")
            return True
        self._deliver(raw, now)
        return True

    def _rate_limited(self, raw: RawFrame, now: float) -> bool:
        if self.cfg.max_fps <= 0:
            return False
        # Files read as fast as possible follow their media clock, so the same frames are kept every run.
        t = raw.media_time if (raw.media_time is not None and not self.source.live) else now
        last = self._last_accept
        if last is not None and last <= t < last + 1.0 / self.cfg.max_fps:
            return True
        self._last_accept = t
        return False

    def _deliver(self, raw: RawFrame, now: float) -> None:
        pixels, offset = preprocess(raw.pixels, self.cfg)
        self._seq += 1
        media = raw.media_time if not self.source.live else None
        origin = (raw.file, raw.index) if raw.file is not None and raw.index is not None else None
        depth = None
        if raw.depth is not None:  # the same rotation and crop as the colour pixels, so they stay registered
            d_px, _ = preprocess(raw.depth.depth_mm, self.cfg)
            fx, fy = raw.depth.fx, raw.depth.fy
            if self.cfg.rotate in (90, 270):
                fx, fy = fy, fx
            depth = DepthFrame(d_px, fx, fy, raw.depth.skew_s)
        ir = None
        if raw.ir is not None:  # registered like depth: the same rotation and crop
            ir = IrFrame(preprocess(raw.ir.grey, self.cfg)[0], raw.ir.skew_s)
        frame = Frame(self.cfg.id, self._seq, pixels, time.time(), now, offset, media, origin, depth, ir)
        self.frames += 1
        self._on_frame(self.cfg.id)
        if self.source.live:
            before = self.slot.stale
            self.slot.put(frame)
            if self.slot.stale != before:
                self._on_drop(self.cfg.id, "stale")
        else:
            self.slot.put_wait(frame, self._stop, self._beat)
