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
from agent.types import IrFrame

log = logging.getLogger(__name__)

_REOPEN_MIN_S, _REOPEN_MAX_S = 0.5, 30.0


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """IR cameras deliver grey (Y8/GREY); OpenCV hands them over as one plane, one channel or three equal
    channels, and 16-bit nodes (Y16) as uint16: all as uint8 grey."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    elif pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels[:, :, :3], cv2.COLOR_BGR2GRAY)
    if pixels.ndim != 2:
        raise ValueError(f"not an image: shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        top = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind in "ui" else 1.0
        pixels = np.clip(pixels.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    return pixels


def register(grey: np.ndarray, registration: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    """The IR image resampled on the colour pixel grid (`size` = colour width, height): pixel (x, y) of the
    result is IR pixel registration(x, y). Outside the IR view: 0 (dark, so no evidence there)."""
    m = np.asarray(registration, np.float64).reshape(2, 3)
    return cv2.warpAffine(
        grey, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
    )


class _IrSide:
    """The IR camera: opened, read and closed by one thread at a time (OpenCV's capture is not safe to
    release while another thread reads it). Any failure, of any kind, closes it for a later reopen: the IR
    side never stops the colour camera."""

    def __init__(self, source: FrameSource, name: str) -> None:
        self.source, self.name = source, name
        self.open = False
        self.ended = False
        self.frames = 0
        self.failures = 0

    def try_open(self) -> bool:
        try:
            self.source.open()
        except Exception as exc:  # noqa: BLE001 - no IR camera (yet): colour goes on, access fails closed
            self.failures += 1
            log.warning("camera %s: infrared camera not available: %s", self.name, exc)
            return False
        self.open, self.ended = True, False
        return True

    def read(self) -> np.ndarray | None:
        """One IR frame (grey), or None when it failed or ended."""
        try:
            raw = self.source.read()
            grey = None if raw is None else to_grey(raw.pixels)
        except Exception as exc:  # noqa: BLE001 - a failing IR camera or frame: reopened later
            self.failures += 1
            log.warning("camera %s: infrared frame failed: %s", self.name, exc)
            self.close()
            return None
        if grey is None:
            self.ended = True
            self.close()
            return None
        self.frames += 1
        return grey

    def close(self) -> None:
        if self.open:
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken camera: nothing more to do
                log.debug("camera %s: closing the infrared camera: %s", self.name, exc)
        self.open = False


class _LiveReader:
    """A live pair's IR thread: keeps the newest IR frame, reopens a lost IR camera with a doubling wait.
    Its own stop event and slot: a thread that outlives a close (a read blocked up to the camera's stall
    timeout) can neither be restarted by mistake nor write into the next one's slot."""

    def __init__(self, side: _IrSide, clock: Callable[[], float]) -> None:
        self._side, self._clock = side, clock
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.latest: tuple[np.ndarray, float] | None = None  # (grey IR, when read)
        self.thread = threading.Thread(target=self._run, name=f"ir-{side.name}", daemon=True)

    def _run(self) -> None:
        wait = _REOPEN_MIN_S
        try:
            while not self.stop.is_set():
                if not self._side.open and not self._side.try_open():
                    self.stop.wait(wait)
                    wait = min(_REOPEN_MAX_S, wait * 2)
                    continue
                grey = self._side.read()
                if grey is None:
                    self.stop.wait(wait)
                    continue
                wait = _REOPEN_MIN_S
                with self._lock:
                    self.latest = (grey, self._clock())
        finally:
            self._side.close()  # the thread that read it closes it

    def newest(self) -> tuple[np.ndarray, float] | None:
        with self._lock:
            return self.latest


class IrPairedSource:
    """A FrameSource (agent/capture/sources.py) of colour frames carrying registered infrared."""

    def __init__(
        self,
        colour: FrameSource,
        ir: FrameSource,
        registration: tuple[float, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`registration`: cameras[].ir.registration (colour pixel -> IR pixel, affine a..f). Both sources
        live (cameras) or both recordings: CameraConfig refuses a mixed pair."""
        self.name = colour.name
        self.live = colour.live
        self._colour, self._registration, self._clock = colour, registration, clock
        self._side = _IrSide(ir, colour.name)
        self._reader: _LiveReader | None = None

    @property
    def ir_frames(self) -> int:
        return self._side.frames

    @property
    def ir_failures(self) -> int:
        return self._side.failures

    def open(self) -> None:
        self.close()
        self._colour.open()
        if not self.live:
            self._side.try_open()

    def _live_reader(self) -> _LiveReader | None:
        """The running reader; a new one once no earlier thread still holds the IR camera."""
        reader = self._reader
        if reader is not None and not reader.stop.is_set():
            return reader
        if reader is not None and reader.thread.is_alive():
            return None  # an earlier thread is still in a blocked read: no IR until it has let go
        self._reader = _LiveReader(self._side, self._clock)
        self._reader.thread.start()
        return self._reader

    def read(self) -> RawFrame | None:
        raw = self._colour.read()
        if raw is None:
            return None
        h, w = raw.pixels.shape[:2]
        if self.live:
            reader = self._live_reader()
            latest = reader.newest() if reader is not None else None
            if latest is None:
                return raw
            grey, taken = latest
            skew = max(0.0, self._clock() - taken)
        else:
            grey = self._side.read() if self._side.open and not self._side.ended else None
            if grey is None:
                return raw
            skew = 0.0
        ir = IrFrame(register(grey, self._registration, (w, h)), skew)
        return RawFrame(raw.pixels, raw.media_time, raw.file, raw.index, raw.depth, ir)

    def close(self) -> None:
        reader = self._reader
        if reader is not None:
            reader.stop.set()
            reader.thread.join(timeout=5.0)  # a read blocked longer ends by its own timeout, then closes
            if not reader.thread.is_alive():
                self._reader = None
        elif not self.live:
            self._side.close()
        self._colour.close()
