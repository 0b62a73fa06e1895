#!/usr/bin/env python3
"""How often does a replayed recording pass the HIGH level's random head-movement challenge by chance?

A replay cannot follow an instruction, so it passes only when the recording happens to show the requested
movement (15 degrees the right way) before the deadline. This script takes every face track of the real
videos in ../shared/data (people who were never asked to do anything: what an attacker without a cued
recording would replay), issues each instruction at every half second of each track, and runs the real
`Challenge` on the frames that follow, exactly as the camera loop does (deadline = issue time + timeout;
a track that ends first is abandoned, i.e. failed). The pass rate over issue times and a uniformly random
instruction is the APCER of the challenge alone against such a replay. It says nothing about an attacker who
sees the instruction and plays a matching clip (a cued replay or a live deepfake): that is not stopped.

    FACE_AGENT_DATA=../shared/data .venv/bin/python scripts/challenge_eval.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from liveness_eval import LIVE_VIDEOS, live_tracks  # noqa: E402 - scripts/ is on sys.path when run

from agent.config import EngineConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gates.challenge import CHALLENGES, Challenge, ChallengeConfig  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402


def outcome(track: list, start: int, instruction: str, cfg: ChallengeConfig) -> str:
    """The challenge's outcome when issued at frame `start` of the track."""
    t0 = track[start][2]
    challenge = Challenge(cfg.timeout_s, cfg.min_change, instruction=instruction, issued_at=t0)
    for _, face, t in track[start + 1 :]:
        if challenge.update(face, t) is not None:
            return challenge.outcome or "?"
    challenge.abandon(track[-1][2])
    return challenge.outcome or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--step", type=float, default=0.5, help="seconds between issue times within a track")
    args = ap.parse_args()
    cfg = ChallengeConfig()
    engine = FaceEngine(EngineConfig())
    counts = {i: {} for i in CHALLENGES}
    tracks = 0
    for video in LIVE_VIDEOS:
        for track in live_tracks(engine, args.data / video):
            tracks += 1
            next_t = track[0][2]
            for start, (_, _, t) in enumerate(track[:-1]):
                if t < next_t:
                    continue
                next_t = t + args.step
                for instruction in CHALLENGES:
                    res = outcome(track, start, instruction, cfg)
                    counts[instruction][res] = counts[instruction].get(res, 0) + 1
    print(
        f"{tracks} face tracks of {len(LIVE_VIDEOS)} real videos; "
        f"timeout {cfg.timeout_s} s, {cfg.min_change} degrees"
    )
    print("| instruction | issued | passed | failed | timed out | abandoned | pass rate |")
    print("|---|---|---|---|---|---|---|")
    rates = []
    for instruction, c in counts.items():
        n = sum(c.values())
        rate = c.get("passed", 0) / n if n else float("nan")
        rates.append(rate)
        cells = " | ".join(str(c.get(k, 0)) for k in ("passed", "failed", "timed_out", "abandoned"))
        print(f"| {instruction} | {n} | {cells} | {rate:.1%} |")
    print(f"random instruction (mean of the four): APCER {sum(rates) / len(rates):.1%}")


if __name__ == "__main__":
    main()
