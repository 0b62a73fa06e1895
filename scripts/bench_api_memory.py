#!/usr/bin/env python3
"""Peak memory of `face-agent serve` under a burst of large legal images (issue 15, item 9).

Starts a real `face-agent serve` (default engine) on loopback, then sends --burst concurrent native compare
requests, each with two --side x --side JPEGs (a real face on a smooth background), and reads the server's RSS
before and its peak (VmHWM) after, from /proc.

    nice python scripts/bench_api_memory.py --burst 24 --side 4096 [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.inference.runtime.cpu import cpu_model  # noqa: E402


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def big_image(data: Path, side: int) -> bytes:
    face = cv2.imread(str(data / "faces/face_recognition/examples/obama-720p.jpg"))
    # A smooth background (upscaled noise) keeps the JPEG small, so the request is legal on every family.
    small = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    canvas = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    scale = side / 4 / face.shape[1]
    face = cv2.resize(face, None, fx=scale, fy=scale)
    canvas[: face.shape[0], : face.shape[1]] = face
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return buf.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=24)
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server process")
    args = ap.parse_args()
    image = big_image(shared_data_dir(ROOT), args.side)
    b64 = base64.b64encode(image).decode()
    body = json.dumps({"image_a_base64": b64, "image_b_base64": b64}).encode()
    env = {**os.environ, **dict(e.split("=", 1) for e in args.env)}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "agent", "serve", "--state-dir", tmp, "--port", "0"]
        server = subprocess.Popen(
            [*cmd, "--allow-unauthenticated-loopback"], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            line = server.stdout.readline()  # "face-agent serve: listening on http://127.0.0.1:PORT"
            port = int(line.rsplit(":", 1)[1])
            before = proc_kb(server.pid, "VmRSS")
            statuses: list[int] = []

            def one() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                try:
                    conn.request("POST", "/api/v1/compare", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    statuses.append(resp.status)
                finally:
                    conn.close()

            threads = [threading.Thread(target=one) for _ in range(args.burst)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            peak = proc_kb(server.pid, "VmHWM")
            after = proc_kb(server.pid, "VmRSS")
        finally:
            server.terminate()
            server.wait(timeout=60)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(
        f"CPU {cpu_model()}; burst {args.burst} x {args.side}x{args.side} JPEG ({len(image) // 1024} KB); "
        f"env {args.env or 'none'}: RSS before {before // 1024} MB, peak {peak // 1024} MB, "
        f"after {after // 1024} MB; answers {counts}"
    )


if __name__ == "__main__":
    main()
