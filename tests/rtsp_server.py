"""A small RTSP camera for the tests: serves a video file, looped at its own frame rate, as MJPEG over RTP.

Run with Debian's /usr/bin/python3, which has GObject introspection (python3-gi) and GStreamer's RTSP server
library (gir1.2-gst-rtsp-server-1.0); the project's venv has neither, and does not need them:

    /usr/bin/python3 tests/rtsp_server.py VIDEO [--port N]
    /usr/bin/python3 tests/rtsp_server.py --check    # exit 0 when every GStreamer element it uses is there

Prints the stream's URL on one line once it accepts clients; exits on SIGTERM or SIGINT.

The clip is decoded and JPEG-encoded once at start, then the same buffers are sent in a loop with
timestamps that keep rising, so a client sees one endless live stream (a file source would end, and a
seek back to the start would make the timestamps jump). JPEG over RTP (RFC 2435) needs only GStreamer's
base and good plugins to send and is read by FFmpeg's RTSP demuxer, which OpenCV uses.
"""

from __future__ import annotations

import argparse
import signal
import sys
from fractions import Fraction

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MOUNT = "/clip"
# qtdemux, jpegenc, rtpjpegpay: plugins-good; h264parse, openh264dec (what decodebin picks for the H.264
# clips of the data folder): plugins-bad, which the RTSP server library depends on anyway; the rest: -base.
ELEMENTS = (
    "qtdemux",
    "h264parse",
    "openh264dec",
    "decodebin",
    "videoconvert",
    "jpegenc",
    "rtpjpegpay",
    "appsrc",
    "appsink",
)


def encode_clip(path: str, quality: int) -> tuple[list[Gst.Buffer], Gst.Caps]:
    """Every frame of the video as a JPEG buffer, and the JPEG caps (size and frame rate)."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! decodebin ! videoconvert ! video/x-raw,format=I420 "
        f"! jpegenc quality={quality} ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[Gst.Buffer] = []
    caps: Gst.Caps | None = None
    # try_pull_sample returns None at the end of the stream or on an error; 10 s bounds a stuck decoder.
    while (sample := sink.emit("try-pull-sample", 10 * Gst.SECOND)) is not None:
        frames.append(sample.get_buffer())
        caps = sample.get_caps()
    pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise SystemExit(f"rtsp_server: no frames decoded from {path}")
    return frames, caps


class LoopingClip:
    """Feeds the encoded frames to one client's appsrc, looping, with continuous timestamps."""

    def __init__(self, frames: list[Gst.Buffer], caps: Gst.Caps) -> None:
        self.frames, self.caps = frames, caps
        ok, num, den = caps.get_structure(0).get_fraction("framerate")
        rate = Fraction(num, den) if ok and num > 0 else Fraction(25)
        self.duration = int(Gst.SECOND / rate)

    def configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name_recurse_up("src")
        src.set_property("caps", self.caps)
        src.set_property("format", Gst.Format.TIME)
        count = [0]  # per client: every connection starts at the clip's first frame

        def need_data(appsrc: Gst.Element, _length: int) -> None:
            n = count[0]
            buf = self.frames[n % len(self.frames)].copy()
            buf.pts = buf.dts = n * self.duration
            buf.duration = self.duration
            count[0] = n + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?")
    parser.add_argument("--check", action="store_true", help="only check that the GStreamer elements exist")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    args = parser.parse_args()

    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if args.check or missing:
        sys.exit(f"rtsp_server: missing GStreamer elements: {' '.join(missing)}" if missing else 0)
    if args.video is None:
        parser.error("VIDEO is required")
    clip = LoopingClip(*encode_clip(args.video, args.quality))
    factory = GstRtspServer.RTSPMediaFactory()
    # The RTP sinks sync to the clock, so the timestamps above pace the stream at the clip's frame rate.
    factory.set_launch("( appsrc name=src ! rtpjpegpay name=pay0 pt=26 )")
    factory.connect("media-configure", clip.configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"rtsp://127.0.0.1:{server.get_bound_port()}{MOUNT}", flush=True)
    loop.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
