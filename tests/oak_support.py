"""An OAK made in software: the depthai SDK's own host-side objects. Each colour / depth pair becomes a
`dai.MessageGroup` of two `dai.ImgFrame`s (BGR888i colour, RAW16 depth in mm, device timestamps one frame
period apart, the depth `skew_ms` later) pushed into a real `dai.MessageQueue`, which is closed at the end
(the recording ends); a `dai.CalibrationHandler` carries CAM_A's intrinsics. agent/capture/oak.py reads
them as it reads a device's queue. It stands in for the camera and its pipeline only: no depthai code is
replaced, and nothing of the device side (stereo matching, alignment on the OAK) runs here."""

from __future__ import annotations

from datetime import timedelta

import depthai as dai
import numpy as np


def calibration(fx: float, width: int, height: int) -> dai.CalibrationHandler:
    handler = dai.CalibrationHandler()
    k = [[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]]
    handler.setCameraIntrinsics(dai.CameraBoardSocket.CAM_A, k, width, height)
    return handler


def group(
    bgr: np.ndarray, depth_mm: np.ndarray | None, at: timedelta, skew_ms: float = 0.0
) -> dai.MessageGroup:
    """One synced pair as the Sync node delivers it: `rgb` (BGR888i) and, unless None, `depth` (RAW16 mm)."""
    colour = dai.ImgFrame()
    colour.setCvFrame(np.ascontiguousarray(bgr), dai.ImgFrame.Type.BGR888i)
    colour.setTimestamp(at)
    out = dai.MessageGroup()
    out["rgb"] = colour
    if depth_mm is not None:
        depth = dai.ImgFrame()
        mm = np.clip(np.nan_to_num(depth_mm), 0, 65535).astype(np.uint16)
        depth.setFrame(mm)
        depth.setType(dai.ImgFrame.Type.RAW16)
        depth.setWidth(mm.shape[1])
        depth.setHeight(mm.shape[0])
        depth.setTimestamp(at + timedelta(milliseconds=skew_ms))
        out["depth"] = depth
    return out


class SoftwareOak:
    """`frames`: (colour BGR uint8, depth mm or None) pairs, played once through a real dai.MessageQueue:
    each `get` sends the next pair's group into the queue and takes it out again; at the end the queue is
    closed, so `get` raises the SDK's QueueException as a device queue does when its pipeline stops."""

    def __init__(
        self, frames: list[tuple[np.ndarray, np.ndarray | None]], fps: int = 30, skew_ms: float = 0.0
    ):
        self._frames, self._i, self._fps, self._skew = frames, 0, fps, skew_ms
        self.queue = dai.MessageQueue("oak-test", 4, False)

    def get(self, timeout: timedelta) -> dai.MessageGroup | None:
        if self._i < len(self._frames):
            bgr, depth = self._frames[self._i]
            self.queue.send(group(bgr, depth, timedelta(seconds=self._i / self._fps), self._skew))
            self._i += 1
        elif not self.queue.isClosed():
            self.queue.close()
        return self.queue.get(timeout=timeout)
