#!/usr/bin/env python3
"""How long does a live person wait before the liveness gate passes them, per level?

Every face track (>= 12 frames, faces >= 64 px) of the real videos in ../shared/data runs through the camera
loop's liveness accumulator (TrackLiveness with the face mesh's blink cue, as agent/recognition/tracking.py
runs it), from the track's first frame; the time of the first report that passes each level is the wait.
People in these videos were not asked to do anything: they sing, talk and walk. A track that never passes is
listed with its length. Per-window BPCER (scripts/liveness_eval.py) answers "is a 0.7 s window refused"; this
answers "how long until the door could open".

    FACE_AGENT_DATA=../shared/data .venv/bin/python scripts/liveness_wait.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from liveness_eval import LIVE_VIDEOS, live_tracks  # noqa: E402 - scripts/ is on sys.path when run

from agent.config import EngineConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gates.blink import BlinkConfig  # noqa: E402
from agent.gates.liveness import LEVELS, TrackLiveness, evaluate_liveness  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.mesh import open_face_mesh  # noqa: E402


def waits(track: list, mesh, blink: BlinkConfig) -> dict[str, float | None]:  # noqa: ANN001 - FaceMesh
    """Seconds from the track's first frame to the first report passing each level (None: never)."""
    tracker = TrackLiveness(blink=blink)
    t0 = track[0][2]
    out: dict[str, float | None] = dict.fromkeys(LEVELS[1:])
    for image, face, t in track:
        openness = None
        if tracker.wants_eyes(face, t):
            openness = mesh.eye_openness(image, face, blink.min_face_probability)
        report = tracker.update(image, face, t, openness)
        for level in out:
            if out[level] is None and evaluate_liveness(report, level).passed:
                out[level] = t - t0
    return out


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    args = ap.parse_args()
    engine = FaceEngine(EngineConfig())
    mesh = open_face_mesh(engine.config)
    blink = BlinkConfig()
    rows = []
    for video in LIVE_VIDEOS:
        for track in live_tracks(engine, args.data / video):
            rows.append((Path(video).name, track[-1][2] - track[0][2], waits(track, mesh, blink)))
    print(f"{len(rows)} live face tracks of {len(LIVE_VIDEOS)} real videos")
    for name, length, w in rows:
        print(f"  {name}: {length:.2f} s, first pass " + ", ".join(f"{k} {_s(v)}" for k, v in w.items()))
    print("| level | passed | median wait s | max wait s | never passed (track length s) |")
    print("|---|---|---|---|---|")
    for level in LEVELS[1:]:
        got = [w[level] for _, _, w in rows if w[level] is not None]
        never = [f"{length:.1f}" for _, length, w in rows if w[level] is None]
        med = f"{statistics.median(got):.2f}" if got else "-"
        top = f"{max(got):.2f}" if got else "-"
        print(f"| {level} | {len(got)}/{len(rows)} | {med} | {top} | {', '.join(never) or '-'} |")


if __name__ == "__main__":
    main()
