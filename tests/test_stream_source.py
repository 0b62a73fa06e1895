"""A network camera over real HTTP: an MJPEG stream (multipart/x-mixed-replace, what many IP cameras and
ESP32-CAMs serve) from a server on loopback, that dies mid-stream and comes back on the same port."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest

from agent.capture import CaptureWorker, open_source
from agent.config import CameraConfig

HAMILTON = "faces/face_recognition/examples/short_hamilton_clip.mp4"
BOUNDARY = "frameboundary"


def _jpeg_frames(path: Path, count: int) -> list[bytes]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", frame)[1].tobytes())
    cap.release()
    return out


class MjpegCamera:
    """An HTTP server streaming JPEG frames at `fps` to every client until stopped."""

    def __init__(self, frames: list[bytes], port: int, fps: float = 20.0) -> None:
        self.frames, self.port, self.fps = frames, port, fps
        self.server: ThreadingHTTPServer | None = None
        self.clients = 0

    def start(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                camera.clients += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                i = 0
                try:
                    while camera.server is not None:
                        jpg = camera.frames[i % len(camera.frames)]
                        head = (
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n"
                        )
                        self.wfile.write(head.encode() + jpg + b"\r\n")
                        i += 1
                        time.sleep(1.0 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def camera(data_dir: Path):
    cam = MjpegCamera(_jpeg_frames(data_dir / HAMILTON, 40), _free_port())
    cam.start()
    yield cam
    cam.stop()


def test_http_mjpeg_camera_streams_and_is_reopened_after_it_dies(camera: MjpegCamera) -> None:
    url = f"http://127.0.0.1:{camera.port}/stream.mjpg"
    cfg = CameraConfig(
        id="ipcam", source=url, reconnect_min_s=0.1, reconnect_max_s=0.5, stall_timeout_s=2, open_timeout_s=5
    )
    assert cfg.resolved_kind == "stream"
    worker = CaptureWorker(cfg, open_source(cfg))
    worker.start()
    try:
        frame = worker.slot.take(timeout=10)
        assert frame is not None and frame.pixels.shape == (360, 640, 3)
        assert wait_for(lambda: worker.frames >= 10)
        camera.stop()  # the camera loses power mid-stream
        assert wait_for(lambda: worker.state != "connected", timeout=10)
        stalled_at = worker.frames
        # A window for something that must not happen: the worker has dropped the stream and the server is
        # closed, so no frame can come; a loaded machine can only lengthen the window, never make this fail.
        time.sleep(0.5)
        assert worker.frames == stalled_at
        camera.start()  # and comes back on the same address
        assert wait_for(lambda: worker.frames > stalled_at + 5, timeout=20)
        assert worker.state == "connected" and worker.reconnects >= 1 and camera.clients >= 2
    finally:
        assert worker.stop(5)
