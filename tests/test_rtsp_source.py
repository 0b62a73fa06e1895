"""An IP camera over real RTSP: tests/rtsp_server.py (GStreamer's RTSP server, run by Debian's Python) serves
the Hamilton clip as MJPEG over RTP on loopback; the agent reads it through open_source + CaptureWorker, the
same OpenCV/FFmpeg path as a real camera. The camera loses power, freezes, or is not there at all."""

from __future__ import annotations

import os
import select
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from test_stream_source import _free_port, wait_for

from agent.capture import CaptureWorker, FrameSource, open_source
from agent.config import CameraConfig
from agent.errors import TransientError

HAMILTON = "faces/face_recognition/examples/short_hamilton_clip.mp4"
CLIP_FPS = 29.97  # the clip's own rate, which the server keeps
SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi and the RTSP server library (scripts/test.sh)


class RtspCamera:
    """tests/rtsp_server.py as a subprocess, restartable on the same port."""

    def __init__(self, video: Path, port: int, log: Path) -> None:
        self.video, self.port, self.log = video, port, log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER), str(self.video), "--port", str(self.port)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.startswith("rtsp://"):
            self.kill()
            pytest.fail(
                f"rtsp_server.py did not start: {self.log.read_text()[-2000:]}\n"
                "it needs python3-gi, gir1.2-gst-rtsp-server-1.0 and GStreamer's base, good and bad plugins "
                "(scripts/test.sh installs them)"
            )
        self.url = line

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """The camera loses power: no goodbye on the wire."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGCONT)  # a frozen server must run again to handle SIGTERM
        self.proc.terminate()
        return self.proc.wait(5)


@pytest.fixture()
def rtsp_camera(data_dir: Path, tmp_path: Path):
    cam = RtspCamera(data_dir / HAMILTON, _free_port(), tmp_path / "rtsp_server.log")
    cam.start()
    yield cam
    cam.kill()


def _config(url: str, **timeouts: float) -> CameraConfig:
    settings = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "stall_timeout_s": 2.0, "open_timeout_s": 3.0}
    return CameraConfig(id="door", source=url, **(settings | timeouts))


def test_rtsp_frames_have_the_clip_size_and_rate_and_a_face(rtsp_camera: RtspCamera, agent_engine) -> None:
    cfg = _config(rtsp_camera.url)
    assert cfg.resolved_kind == "stream"
    delivered: list[float] = []  # when the capture thread handed over each frame
    worker = CaptureWorker(cfg, open_source(cfg), on_frame=lambda _camera: delivered.append(time.monotonic()))
    worker.start()
    try:
        first = worker.slot.take(timeout=10)
        assert first is not None and first.pixels.shape == (360, 640, 3)
        assert worker.state == "connected"
        # The rate from the frames' own delivery times, over 150 frames (5 s of the clip) waited for rather
        # than over a fixed sleep. The frames buffered while the session was set up come first in a burst
        # (measured: about 20 within 50 ms), and a loaded machine may hand a few over late, then together:
        # the median over sliding 30-frame windows is set by the stream's pace, not by those. Measured with
        # both cores loaded: sampled windows past the burst between 27 and 33 fps, the median 29.97-30.00.
        assert wait_for(lambda: len(delivered) >= 150, timeout=60), worker.stats()
        times = delivered[:150]
        fps = 30 / statistics.median(b - a for a, b in zip(times, times[30:], strict=False))
        assert 0.7 * CLIP_FPS < fps < 1.3 * CLIP_FPS, fps
        assert worker.slot.depth <= 1 and worker.stale > 0  # nobody took frames: dropped, not queued
        # 3 s of the clip (90 frames of the stream, counted by seq, so a slow detector only means fewer
        # samples, and at least 20 of them): the detector finds Hamilton's face in about 85 % of its frames,
        # none longer than a few frames apart (measured on the file), so half is a margin, not luck.
        seen = with_face = 0
        seqs: list[int] = []
        deadline = time.monotonic() + 120
        while not seqs or seqs[-1] - seqs[0] < 90 or seen < 20:
            assert time.monotonic() < deadline, (seen, with_face)
            # A gap longer than the stall timeout would be a stall by the worker's own definition.
            frame = worker.slot.take(timeout=cfg.stall_timeout_s)
            assert frame is not None and frame.pixels.shape == (360, 640, 3)
            seqs.append(frame.seq)
            faces = agent_engine.detect(frame.pixels)
            seen, with_face = seen + 1, with_face + bool(faces and faces[0].box.width >= 40)
        assert seen >= 20 and with_face >= seen / 2, (seen, with_face)
    finally:
        assert worker.stop(5)
    assert rtsp_camera.stop() == 0  # SIGTERM ends the server cleanly


def test_rtsp_camera_killed_mid_stream_is_reopened_when_it_returns(rtsp_camera: RtspCamera) -> None:
    cfg = _config(rtsp_camera.url)
    worker = CaptureWorker(cfg, open_source(cfg))
    worker.start()
    try:
        assert wait_for(lambda: worker.frames >= 10, timeout=10)
        rtsp_camera.kill()
        assert wait_for(lambda: worker.state != "connected", timeout=cfg.stall_timeout_s + 3)
        # Down: the thread lives on, retrying with backoff; nothing new arrives and nothing piles up.
        assert wait_for(lambda: worker.failures >= 3, timeout=30), worker.stats()
        stalled_at = worker.frames
        # A window for something that must not happen: with the server process dead, no frame can come, so a
        # loaded machine can only lengthen the window, never make this fail.
        time.sleep(0.5)
        assert worker.frames == stalled_at and worker.slot.depth <= 1
        assert worker.state == "unavailable" and "cannot open stream" in (worker.last_error or "")
        rtsp_camera.start()  # the camera comes back on the same address
        assert wait_for(lambda: worker.frames > stalled_at + 10, timeout=15), worker.stats()
        assert worker.state == "connected" and worker.reconnects >= 3
        frame = worker.slot.take(timeout=2)
        assert frame is not None and frame.pixels.shape == (360, 640, 3)
    finally:
        assert worker.stop(5)


def test_rtsp_camera_that_freezes_hits_the_read_then_the_open_timeout(rtsp_camera: RtspCamera) -> None:
    # SIGSTOP: the process hangs but the kernel keeps its sockets, so reads get nothing and new connections
    # are accepted and never answered. Only the timeouts get the capture thread out.
    cfg = _config(rtsp_camera.url, stall_timeout_s=1.0, open_timeout_s=1.0)
    worker = CaptureWorker(cfg, open_source(cfg))
    worker.start()
    try:
        assert wait_for(lambda: worker.frames >= 10, timeout=10)
        rtsp_camera.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        assert wait_for(lambda: worker.state == "lost", timeout=cfg.stall_timeout_s + 2), worker.stats()
        assert time.monotonic() - frozen_at >= cfg.stall_timeout_s - 0.3  # the read waited for its timeout
        failures = worker.failures
        assert wait_for(lambda: worker.failures >= failures + 2, timeout=2 * (cfg.open_timeout_s + 1.5))
        assert worker.state == "unavailable"
        rtsp_camera.signal(signal.SIGCONT)
        frames = worker.frames
        assert wait_for(lambda: worker.frames > frames + 10, timeout=15), worker.stats()
        assert worker.state == "connected"
    finally:
        assert worker.stop(5)


class _OpenAttempts:
    """The real source, noting when each open() starts and ends (in the capture thread, on its clock)."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.starts: list[float] = []
        self.ends: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.source, name)

    def open(self) -> None:
        self.starts.append(time.monotonic())
        try:
            self.source.open()
        finally:
            self.ends.append(time.monotonic())


def test_rtsp_url_where_nothing_listens_fails_fast_and_backs_off() -> None:
    cfg = _config(f"rtsp://127.0.0.1:{_free_port()}/stream", reconnect_min_s=0.1, reconnect_max_s=0.4)
    source = open_source(cfg)
    t0 = time.monotonic()
    with pytest.raises(TransientError) as err:
        source.open()
    assert err.value.code == "source_open" and time.monotonic() - t0 < 1.0  # refused: no wait at all
    attempts = _OpenAttempts(source)
    worker = CaptureWorker(cfg, attempts)
    worker.start()
    try:
        # 0.1 + 0.2 + 0.4 + 0.4 ...: attempts spaced by the backoff, neither a busy loop nor a hang. Not
        # counted in a fixed 1.5 s (a loaded machine runs fewer attempts in it): waited for (not a hang), then
        # the waits between them read from the capture thread's own times.
        backoff = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
        assert wait_for(lambda: len(attempts.ends) > len(backoff), timeout=30), worker.stats()
        waits = [b - a for a, b in zip(attempts.ends, attempts.starts[1:], strict=False)][: len(backoff)]
        assert all(w >= d for w, d in zip(waits, backoff, strict=True)), waits  # not a busy loop
        # Not much longer than the backoff either (e.g. seconds for tenths, or no cap): a late wake-up of a
        # loaded machine lengthens a wait or two, not the median. Measured with both cores loaded: waits up
        # to 16 ms over their backoff, medians under 3 ms.
        assert statistics.median(w - d for w, d in zip(waits, backoff, strict=True)) < 0.15, waits
        assert worker.failures >= len(backoff), worker.stats()
        assert worker.state == "unavailable" and worker.frames == 0 and worker.slot.take() is None
    finally:
        t0 = time.monotonic()
        assert worker.stop(5) and time.monotonic() - t0 < 1.0  # stop does not wait out the backoff


def test_rtsp_open_of_a_server_that_never_answers_ends_at_open_timeout() -> None:
    # A listening socket that accepts and says nothing (a hung camera, a wrong port on a busy host). Without
    # the configured timeout OpenCV would wait its own 30 s default.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = _config(f"rtsp://127.0.0.1:{silent.getsockname()[1]}/stream", open_timeout_s=1.5)
        source = open_source(cfg)
        t0 = time.monotonic()
        with pytest.raises(TransientError) as err:
            source.open()
        waited = time.monotonic() - t0
    assert err.value.code == "source_open"
    assert cfg.open_timeout_s - 0.2 < waited < cfg.open_timeout_s + 1.5, waited
