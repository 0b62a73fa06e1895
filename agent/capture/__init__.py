"""Capture: frame sources behind one protocol and one capture thread per camera with a latest-frame slot.

Owns where pixels come from (cameras, streams, files, uploaded bytes: imageio); imports only ops.
"""

from agent.capture.factory import open_source
from agent.capture.sources import FrameSource, ImageFolderSource, OpenCVSource, RawFrame
from agent.capture.worker import Backoff, CaptureWorker, Frame, LatestFrameSlot, preprocess

__all__ = [
    "Backoff",
    "CaptureWorker",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "LatestFrameSlot",
    "OpenCVSource",
    "RawFrame",
    "open_source",
    "preprocess",
]
