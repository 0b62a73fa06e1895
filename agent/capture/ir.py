"""A colour camera paired with a near-infrared camera (`cameras[].ir`): colour frames carrying registered IR.

Laptop face-login modules and door terminals put an IR camera (a V4L2 node delivering grey frames, often
/dev/video2) and an IR illuminator next to the colour camera. This source reads both and hands the capture
worker colour frames with `RawFrame.ir`: the IR image warped onto the colour pixels with the pair's
calibration (`ir.registration`, an affine map from a colour pixel to the IR pixel of the same point), so the
IR gate (agent/gates/ir.py) looks where the colour face is.

- live colour sources (devices, streams): the IR camera is read by its own thread into a one-frame slot; each
  colour frame takes the newest IR frame, and `skew_s` is that IR frame's age (the gate refuses stale ones);
- recordings (files and folders read as fast as the pipeline takes them): one IR frame per colour frame, in
  lockstep, skew 0 (frame-aligned recordings of the two cameras);
- an IR camera that fails to open or stops delivering does not stop the colour camera: its frames come
  with `ir=None` and the IR gate answers `ir_missing`, so access fails closed; the IR side is reopened
  with backoff.

Written for V4L2 IR cameras through OpenCV and tested with recordings (image folders and video files) of made
IR frames: **it has never run against a real infrared camera**.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from agent.capture.sources import FrameSource, RawFrame
from agent.errors import AgentError
from agent.types import IrFrame

log = logging.getLogger(__name__)

_REOPEN_MIN_S, _REOPEN_MAX_S = 0.5, 30.0


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """IR cameras deliver grey (Y8/GREY); OpenCV often hands them over as three equal channels."""
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def register(grey: np.ndarray, registration: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    """The IR image resampled on the colour pixel grid (`size` = colour width, height): pixel (x, y) of the
    result is IR pixel registration(x, y). Outside the IR view: 0 (dark, so no evidence there)."""
    m = np.asarray(registration, np.float64).reshape(2, 3)
    return cv2.warpAffine(
        grey, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
    )


class IrPairedSource:
    """A FrameSource (agent/capture/sources.py) of colour frames carrying registered infrared."""

    def __init__(
        self,
        colour: FrameSource,
        ir: FrameSource,
        registration: tuple[float, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`registration`: cameras[].ir.registration (colour pixel -> IR pixel, affine a..f)."""
        self.name = colour.name
        self.live = colour.live
        self._colour, self._ir, self._registration, self._clock = colour, ir, registration, clock
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None  # (grey IR, when read)
        self._ir_open = False
        self._ir_ended = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ir_frames = 0
        self.ir_failures = 0

    # -- the IR side -------------------------------------------------------------------------------------

    def _open_ir(self) -> bool:
        try:
            self._ir.open()
        except AgentError as exc:  # no IR camera (yet): colour goes on, access fails closed
            self.ir_failures += 1
            log.warning("camera %s: infrared camera not available: %s", self.name, exc)
            return False
        self._ir_open, self._ir_ended = True, False
        return True

    def _read_ir(self) -> np.ndarray | None:
        """One IR frame (grey), or None when it failed or ended; failures close it for a reopen."""
        try:
            raw = self._ir.read()
        except AgentError as exc:
            self.ir_failures += 1
            log.warning("camera %s: infrared frame failed: %s", self.name, exc)
            self._close_ir()
            return None
        if raw is None:
            self._ir_ended = True
            self._close_ir()
            return None
        self.ir_frames += 1
        return to_grey(raw.pixels)

    def _close_ir(self) -> None:
        if self._ir_open:
            try:
                self._ir.close()
            except AgentError as exc:
                log.debug("camera %s: closing the infrared camera: %s", self.name, exc)
        self._ir_open = False

    def _ir_loop(self) -> None:
        """Live pairs: keep the newest IR frame; reopen a lost IR camera with a doubling wait."""
        wait = _REOPEN_MIN_S
        while not self._stop.is_set():
            if not self._ir_open and not self._open_ir():
                self._stop.wait(wait)
                wait = min(_REOPEN_MAX_S, wait * 2)
                continue
            grey = self._read_ir()
            if grey is None:
                self._stop.wait(wait)
                continue
            wait = _REOPEN_MIN_S
            with self._lock:
                self._latest = (grey, self._clock())

    # -- FrameSource -------------------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        self._colour.open()
        self._stop.clear()
        if self.live:
            self._thread = threading.Thread(target=self._ir_loop, name=f"ir-{self.name}", daemon=True)
            self._thread.start()
        else:
            self._open_ir()

    def read(self) -> RawFrame | None:
        raw = self._colour.read()
        if raw is None:
            return None
        h, w = raw.pixels.shape[:2]
        if self.live:
            with self._lock:
                latest = self._latest
            if latest is None:
                return raw
            grey, taken = latest
            skew = max(0.0, self._clock() - taken)
        else:
            grey = self._read_ir() if self._ir_open and not self._ir_ended else None
            if grey is None:
                return raw
            skew = 0.0
        ir = IrFrame(register(grey, self._registration, (w, h)), skew)
        return RawFrame(raw.pixels, raw.media_time, raw.file, raw.index, raw.depth, ir)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close_ir()
        with self._lock:
            self._latest = None
        self._colour.close()
