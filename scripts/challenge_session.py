#!/usr/bin/env python3
"""Record cooperative challenge sessions from a camera and measure how long real people take, and how often
they pass (issue 18: no footage of people following instructions exists in ../shared/data).

Each attempt: wait until one face looks at the camera (|yaw|, |pitch| < 15 degrees for 1 s), issue a
challenge (the camera's ChallengeConfig: steps, onset window, hold), show each instruction the moment it is
issued (on a window over the live picture, or printed in the terminal with a bell with `--no-display`), feed
every frame to the real `Challenge`, and log the outcome, the reason, and per step the response onset
(instruction shown -> movement started) and the completion time. Between attempts the person looks back at
the camera. At the end: pass rate, pass time (median / 90th percentile), onset latencies per step, reasons.

    python scripts/challenge_session.py --source 0 --attempts 20 --json session.json   # USB camera 0
    python scripts/challenge_session.py --source rtsp://... --no-display --record rec/  # keep the frames

`--record DIR` writes the frames (session.mp4) with the instruction log (session.json: per frame its time,
pose and the instruction on screen), so a session can be replayed through scripts/challenge_eval.py-style
analysis or given to the project as footage. A video file as `--source` is read at its own speed (a smoke
test: a recording cannot follow instructions, so it fails). Timestamps: the frame's arrival on the monotonic
clock (a camera), or its media time (a file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from agent.capture import open_source  # noqa: E402
from agent.config import CameraConfig, EngineConfig, parse_model  # noqa: E402
from agent.errors import TransientError  # noqa: E402
from agent.gates.challenge import Challenge, ChallengeConfig  # noqa: E402
from agent.gates.pose import estimate_pose  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402

FRONTAL_DEG = 15.0
FRONTAL_S = 1.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Screen:
    """The instruction in front of the person: an OpenCV window, or the terminal."""

    def __init__(self, display: bool) -> None:
        self.display = display
        self.text = ""

    def show(self, text: str) -> None:
        if text != self.text and not self.display:
            print(f"\a>>> {text}" if text else "", flush=True)
        self.text = text

    def frame(self, pixels, face) -> bool:
        """Draw and show; False when the user closed the session (q or Esc)."""
        if not self.display:
            return True
        img = pixels.copy()
        if face is not None:
            b = face.box
            cv2.rectangle(img, (int(b.x1), int(b.y1)), (int(b.x2), int(b.y2)), (0, 200, 0), 2)
        cv2.putText(img, self.text, (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 255), 3)
        cv2.imshow("face-agent challenge session", img)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)


def run(args: argparse.Namespace) -> dict:
    cfg = ChallengeConfig(**json.loads(args.challenge)) if args.challenge else ChallengeConfig()
    engine = FaceEngine(EngineConfig())
    cam = parse_model(CameraConfig, {"id": "session", "source": args.source, "realtime": False})
    source = open_source(cam)
    source.open()
    screen = Screen(args.display)
    writer = None
    frames_log: list[dict] = []
    attempts: list[dict] = []
    challenge: Challenge | None = None
    frontal_since: float | None = None
    index = 0
    try:
        while len(attempts) < args.attempts:
            try:
                raw = source.read()
            except TransientError as exc:
                print(f"camera: {exc}", file=sys.stderr)
                break
            if raw is None:
                break
            t = raw.media_time if raw.media_time is not None else time.monotonic()
            faces = engine.detect(raw.pixels)
            face = max(faces, key=lambda f: f.box.width, default=None)
            pose = None
            if face is not None:
                try:
                    pose = estimate_pose(face.keypoints)
                except ValueError:
                    pose = None
            if challenge is None:
                screen.show("look at the camera")
                steady = pose is not None and abs(pose.yaw) < FRONTAL_DEG and abs(pose.pitch) < FRONTAL_DEG
                frontal_since = (frontal_since if frontal_since is not None else t) if steady else None
                if frontal_since is not None and t - frontal_since >= FRONTAL_S:
                    challenge = Challenge(cfg, issued_at=t)
                    screen.show(challenge.text)
            elif face is not None:
                step = challenge.step
                try:
                    challenge.update(face, t)
                except ValueError:
                    pass
                if challenge.result is None and challenge.step != step:
                    screen.show(challenge.text)
            elif challenge.expired(t):
                challenge.abandon(t)
            if challenge is not None and challenge.result is not None:
                attempts.append(outcome(challenge))
                print(
                    f"attempt {len(attempts)}: {challenge.outcome} ({challenge.reason or 'all steps'})",
                    flush=True,
                )
                challenge, frontal_since = None, None
            if args.record is not None:
                if writer is None:
                    args.record.mkdir(parents=True, exist_ok=True)
                    h, w = raw.pixels.shape[:2]
                    writer = cv2.VideoWriter(
                        str(args.record / "session.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h)
                    )
                writer.write(raw.pixels)
                frames_log.append(
                    {
                        "frame": index,
                        "t": t,
                        "text": screen.text,
                        "yaw": None if pose is None else round(pose.yaw, 2),
                        "pitch": None if pose is None else round(pose.pitch, 2),
                    }
                )
            index += 1
            if not screen.frame(raw.pixels, face):
                break
        if challenge is not None and challenge.result is None:
            challenge.abandon(float("inf"))
            attempts.append(outcome(challenge))
    finally:
        source.close()
        if writer is not None:
            writer.release()
            (args.record / "session.json").write_text(json.dumps({"frames": frames_log}, indent=0))
        if args.display:
            cv2.destroyAllWindows()
    return summary(attempts, cfg)


def outcome(ch: Challenge) -> dict:
    return {
        "outcome": ch.outcome,
        "reason": ch.reason,
        "instructions": list(ch.instructions),
        "steps_done": len(ch.history),
        "steps": [
            {"instruction": i, "onset_s": round(o - s, 3), "done_s": round(d - s, 3)}
            for i, s, o, d in ch.history
        ],
        "pass_s": round(ch.history[-1][3] - ch.issued_at, 3)
        if ch.result and ch.issued_at is not None
        else None,
    }


def summary(attempts: list[dict], cfg: ChallengeConfig) -> dict:
    passed = [a for a in attempts if a["outcome"] == "passed"]
    times = [a["pass_s"] for a in passed if a["pass_s"] is not None]
    onsets: dict[int, list[float]] = {}
    for a in attempts:
        for k, st in enumerate(a["steps"], 1):
            onsets.setdefault(k, []).append(st["onset_s"])
    reasons: dict[str, int] = {}
    for a in attempts:
        if a["reason"]:
            reasons[a["reason"]] = reasons.get(a["reason"], 0) + 1
    return {
        "config": cfg.model_dump(),
        "attempts": len(attempts),
        "passed": len(passed),
        "pass_rate": len(passed) / len(attempts) if attempts else None,
        "pass_time_median_s": statistics.median(times) if times else None,
        "pass_time_p90_s": percentile(times, 0.9),
        "onset_by_step_s": {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for k, v in sorted(onsets.items())
        },
        "reasons": reasons,
        "detail": attempts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="camera index, device path, stream URL or video file")
    ap.add_argument("--attempts", type=int, default=10)
    ap.add_argument("--challenge", help="ChallengeConfig as JSON, e.g. '{\"steps\": 2}' (default: defaults)")
    ap.add_argument("--no-display", dest="display", action="store_false", help="instructions in the terminal")
    ap.add_argument("--record", type=Path, help="write session.mp4 and session.json (frames, poses, texts)")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()
    result = run(args)
    brief = {k: v for k, v in result.items() if k != "detail"}
    print(json.dumps(brief, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
