"""Frame sources behind one protocol: V4L2/USB devices, RTSP/HTTP streams, video files, GStreamer pipelines
(all through OpenCV's VideoCapture) and folders of images.

A source is opened, read frame by frame and closed by one capture thread (agent/capture/worker.py), which
also owns reconnection: a source only reports what went wrong (`TransientError`) or that it ended (`None`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from agent.config import CameraConfig
from agent.errors import ConfigError, DeviceError, TransientError
from agent.ops.redact import scrub
from agent.types import DepthFrame, IrFrame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class RawFrame:
    """What a source returns: pixels (BGR uint8) and, for files, the position in the media in seconds."""

    pixels: np.ndarray
    media_time: float | None = None
    file: str | None = None  # files and folders: the file's name, carried into events
    index: int | None = None  # its frame number in a video; for an image, which of its frames_per_image
    depth: DepthFrame | None = None  # depth cameras: depth registered to `pixels`
    ir: IrFrame | None = None  # cameras paired with an infrared camera: IR registered to `pixels`


class FrameSource(Protocol):
    """One camera-like input. Methods are called from a single thread; each call is bounded in time."""

    name: str
    live: bool  # True: frames keep coming whether read or not, so stale ones are dropped (cameras, streams)

    def open(self) -> None:
        """Open or reopen; TransientError when the source is not there (yet)."""

    def read(self) -> RawFrame | None:
        """The next frame; None at the end of a finite source; TransientError on a failure."""

    def close(self) -> None: ...


class OpenCVSource:
    """Devices, streams, files and GStreamer pipelines through cv2.VideoCapture."""

    def __init__(self, cfg: CameraConfig, kind: str, *, realtime: bool = True) -> None:
        self.name = cfg.id
        self.kind = kind
        self._cfg = cfg
        # A file read as fast as possible is not live: the worker waits for the pipeline instead of dropping.
        self.live = kind in ("device", "stream", "gstreamer") or realtime
        self._pace = kind == "file" and realtime
        self._cap: cv2.VideoCapture | None = None
        self._native_fps = 0.0
        self._t0 = 0.0
        self._index = 0
        if kind == "gstreamer" and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise DeviceError(
                f"camera {cfg.id}: this OpenCV build has no GStreamer support; install an OpenCV built with "
                "GStreamer (e.g. the distribution's python3-opencv) to use nvarguscamerasrc / libcamerasrc"
            )

    def _target(self) -> tuple[str | int, int]:
        src, kind = self._cfg.source, self.kind
        if kind == "device":
            target: str | int = int(src) if src.strip().isdigit() else src
            return target, cv2.CAP_V4L2
        if kind == "gstreamer":
            return src, cv2.CAP_GSTREAMER
        if kind == "file" and not Path(src).is_file():
            raise TransientError(f"camera {self.name}: video file {src} is missing", code="source_missing")
        return src, cv2.CAP_FFMPEG

    def open(self) -> None:
        self.close()
        target, api = self._target()
        # Open/read timeouts keep a dead or stalled stream from blocking the capture thread forever (FFmpeg
        # backend): a read that times out fails, and the worker reopens the source with backoff.
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self._cfg.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self._cfg.stall_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(target, api, params)
        if not cap.isOpened():
            cap.release()
            # Named without credentials (the URL's user part, credential parameters): this text reaches
            # logs and the console.
            shown = scrub(target) if isinstance(target, str) else target
            raise TransientError(f"camera {self.name}: cannot open {self.kind} {shown!r}", code="source_open")
        if self.kind == "device":
            if self._cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._cfg.width)
            if self._cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._cfg.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short: we want the newest frame
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._native_fps = fps if 0 < fps < 1000 else 25.0
        self._cap, self._t0, self._index = cap, time.monotonic(), 0

    def read(self) -> RawFrame | None:
        if self._cap is None:
            raise TransientError(f"camera {self.name}: not open", code="source_closed")
        ok, pixels = self._cap.read()
        if not ok or pixels is None:
            if self.kind == "file":
                if not Path(self._cfg.source).is_file():
                    raise TransientError(f"camera {self.name}: file vanished", code="source_missing")
                return None  # end of the file
            raise TransientError(f"camera {self.name}: no frame from {self.kind}", code="source_read")
        index = self._index
        media_time = index / self._native_fps if self.kind == "file" else None
        self._index += 1
        if self._pace and media_time is not None:
            delay = self._t0 + media_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if self.kind == "file":
            return RawFrame(pixels, media_time, Path(self._cfg.source).name, index)
        return RawFrame(pixels, media_time)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def list_images(folder: Path) -> list[Path]:
    """The images an image-folder camera plays, in name order (raises OSError when it cannot be listed)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderSource:
    """Every image of a folder in name order, each delivered `frames_per_image` times.

    The listing is taken at open(); a file or folder that vanishes is reported as TransientError so the
    worker reopens the folder (with backoff) once it is back."""

    def __init__(self, cfg: CameraConfig, *, realtime: bool = True) -> None:
        self.name = cfg.id
        self.live = realtime
        self._cfg = cfg
        self._files: list[Path] = []
        self._pos = 0
        self._repeat = 0
        self._current: np.ndarray | None = None
        self._next_at = 0.0

    def open(self) -> None:
        folder = Path(self._cfg.source)
        try:
            files = list_images(folder)
        except OSError as exc:
            raise TransientError(
                f"camera {self.name}: cannot list {folder}: {exc}", code="source_missing"
            ) from exc
        if not files:
            raise TransientError(f"camera {self.name}: no images in {folder}", code="source_empty")
        self._files, self._pos, self._repeat, self._current = files, 0, 0, None
        self._next_at = time.monotonic()

    def _load(self, path: Path) -> np.ndarray:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TransientError(f"camera {self.name}: {path.name} vanished", code="source_missing") from exc
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            log.warning("camera %s: %s is not a decodable image; skipped", self.name, path)
        return pixels

    def read(self) -> RawFrame | None:
        while self._current is None or self._repeat >= self._cfg.frames_per_image:
            if self._pos >= len(self._files):
                return None
            self._current, self._repeat = self._load(self._files[self._pos]), 0
            self._pos += 1
        self._repeat += 1
        if self.live:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_at = max(self._next_at, time.monotonic() - 1.0) + 1.0 / self._cfg.folder_fps
        index = (self._pos - 1) * self._cfg.frames_per_image + self._repeat - 1
        name = self._files[self._pos - 1].name
        return RawFrame(self._current, index / self._cfg.folder_fps, name, self._repeat - 1)

    def close(self) -> None:
        self._current = None


def ir_camera_config(cfg: CameraConfig) -> CameraConfig:
    """The IR camera of a camera with `ir` as a plain source config: raw frames (no rotation or ROI: the
    worker applies the colour camera's to the registered IR), the colour camera's pacing and timeouts."""
    if cfg.ir is None:
        raise ValueError(f"camera {cfg.id} has no ir")
    update = {"source": cfg.ir.source, "kind": cfg.ir.kind, "rotate": 0, "roi": None, "width": None}
    return cfg.model_copy(update={**update, "height": None, "ir": None, "depth": None})


def check_local_source(cfg: CameraConfig) -> None:
    """At start, a video file or an image folder that is not there is a mistake in the config, not a camera
    that may come back: raise ConfigError (exit 78) instead of retrying forever. Devices and streams do come
    back, and so may a file or folder that vanishes after start (the worker retries those). The same for
    the IR camera of a camera with `ir`."""
    if cfg.ir is not None:
        check_local_source(ir_camera_config(cfg))
    kind, path = cfg.resolved_kind, Path(cfg.source)
    if kind == "file" and not path.is_file():
        raise ConfigError(f"camera {cfg.id}: source {cfg.source} does not exist (nor is it a folder)")
    if kind == "folder":
        try:
            images = list_images(path)
        except OSError as exc:
            raise ConfigError(f"camera {cfg.id}: cannot list {cfg.source}: {exc.strerror or exc}") from exc
        if not images:
            raise ConfigError(
                f"camera {cfg.id}: no images ({', '.join(IMAGE_SUFFIXES)}) in folder {cfg.source}"
            )
