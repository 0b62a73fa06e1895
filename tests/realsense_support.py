"""A RealSense made in software: librealsense's own `rs.software_device` with a colour and a depth sensor
(640x480-style intrinsics from the test, a 15 mm baseline as on a D435), frames pushed one pair per read
and synchronised by `rs.syncer`, so agent/capture/realsense.py runs the SDK's real frameset, alignment and
unit paths. It stands in for the camera only: no librealsense code is replaced."""

from __future__ import annotations

import numpy as np
import pyrealsense2 as rs

DEPTH_UNITS = 0.001  # metres per z16 step (1 mm), as a D4xx's default


class SoftwareRealSense:
    """`frames`: (colour BGR uint8, depth mm float32 or None) pairs, played once; `wait_for_frames` pushes
    the next pair and returns the synchronised frameset, then None at the end."""

    def __init__(self, frames: list[tuple[np.ndarray, np.ndarray | None]], fx: float, fps: int = 30) -> None:
        h, w = frames[0][0].shape[:2]
        self._frames, self._i, self._fps = frames, 0, fps
        self.device = rs.software_device()
        self._depth_sensor = self.device.add_sensor("Depth")
        self._colour_sensor = self.device.add_sensor("Color")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = w, h, w / 2, h / 2, fx, fx
        intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
        self._depth_profile = self._depth_sensor.add_video_stream(
            self._stream(rs.stream.depth, 0, w, h, 2, rs.format.z16, intr)
        )
        self._depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNITS)
        self._colour_profile = self._colour_sensor.add_video_stream(
            self._stream(rs.stream.color, 1, w, h, 3, rs.format.bgr8, intr)
        )
        ext = rs.extrinsics()
        ext.rotation, ext.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0.0, 0.0, 0.0]
        self._depth_profile.register_extrinsics_to(self._colour_profile, ext)
        self.device.create_matcher(rs.matchers.default)
        self._sync = rs.syncer()
        self._depth_sensor.open(self._depth_profile)
        self._colour_sensor.open(self._colour_profile)
        self._depth_sensor.start(self._sync)
        self._colour_sensor.start(self._sync)
        # The syncer's matcher learns the streams from their first frames and hands the first colour frame
        # out alone: a warm-up pair (the first one, numbered 0) is pushed and dropped; frames count from 1.
        self._numbered = 0
        self._next()

    def _stream(self, kind, uid, w, h, bpp, fmt, intr):
        s = rs.video_stream()
        s.type, s.index, s.uid, s.width, s.height, s.fps, s.bpp, s.fmt, s.intrinsics = (
            kind,
            0,
            uid,
            w,
            h,
            self._fps,
            bpp,
            fmt,
            intr,
        )
        return s

    def _push(self, sensor, profile, pixels: np.ndarray, bpp: int, number: int) -> None:
        f = rs.software_video_frame()
        f.pixels, f.bpp, f.stride = pixels, bpp, pixels.shape[1] * bpp
        f.timestamp, f.domain, f.frame_number = (
            number * 1000.0 / self._fps,
            rs.timestamp_domain.hardware_clock,
            number,
        )
        f.profile = profile.as_video_stream_profile()
        if bpp == 2:
            f.depth_units = DEPTH_UNITS
        sensor.on_video_frame(f)

    def _next(self, timeout_ms: int = 5000):
        colour, depth = self._frames[min(self._i, len(self._frames) - 1)]
        number = self._numbered
        self._numbered += 1
        if depth is not None:
            z16 = np.clip(np.round(depth / (DEPTH_UNITS * 1000.0)), 0, 65535).astype(np.uint16)
            self._push(self._depth_sensor, self._depth_profile, z16, 2, number)
        self._push(self._colour_sensor, self._colour_profile, np.ascontiguousarray(colour), 3, number)
        while True:  # the syncer may hand out an earlier, partial set first: take the one with this colour
            fs = self._sync.wait_for_frames(timeout_ms)
            colour_frame = fs.get_color_frame()
            if colour_frame and colour_frame.get_frame_number() == number:
                return fs

    def wait_for_frames(self, timeout_ms: int):
        if self._i >= len(self._frames):
            return None
        fs = self._next(timeout_ms)
        self._i += 1
        return fs

    def close(self) -> None:
        for sensor in (self._depth_sensor, self._colour_sensor):
            sensor.stop()
            sensor.close()
