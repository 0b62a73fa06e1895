#!/usr/bin/env python3
"""How often does a replayed recording pass the HIGH level's challenge by chance? Frame-accurate.

A replay cannot follow an instruction: it passes only when the recording happens to show the requested
movements, each starting inside its onset window, in a row. This script takes every face track of the real
videos in ../shared/data (people who were never asked to do anything: what an attacker without a cued
recording would replay), also played mirrored and backwards (an attacker can do both), issues the challenge
at **every frame** of each track with **every** instruction sequence the challenge can draw (16 for 3 steps:
4 first instructions x 2 x 2 on the alternating axis), and runs the real `Challenge` on the frames from there
on, exactly as the camera loop feeds it. Per attempt:

  - pass rate over all attempts (an attempt whose track ends first is abandoned: a failure);
  - pass rate over the attempts decided before their track ended (the conservative figure: a longer
    recording could have continued);
  - how far the attempts got (steps passed) and why they failed.

Printed for the configured challenge (defaults of ChallengeConfig) and for the 0.2 single-step rule (one
instruction, no onset window, no hold, 6 s), so one run compares both. Frames are the videos' own (25 fps);
`--stride 2` feeds every second frame (a camera loop at ~12 fps). It says nothing about an attacker who sees
the instruction and plays a matching clip (a cued replay or a live deepfake): that is not stopped.

    FACE_AGENT_DATA=../shared/data .venv/bin/python scripts/challenge_eval.py [--stride 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from liveness_eval import LIVE_VIDEOS, live_tracks  # noqa: E402 - scripts/ is on sys.path when run

from agent.config import EngineConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gates.challenge import CHALLENGES, Challenge, ChallengeConfig  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.types import Face  # noqa: E402

OLD_RULE = ChallengeConfig(steps=1, timeout_s=6.0, onset_min_s=0.0, onset_max_s=6.0, hold_s=0.0)
_MIRROR = [1, 0, 2, 3, 5, 4]  # KEYPOINT_NAMES with left and right swapped


def sequences(steps: int) -> list[tuple[str, ...]]:
    """Every instruction sequence `draw_instructions` can produce (the axis alternates)."""
    out = []
    for seq in itertools.product(sorted(CHALLENGES), repeat=steps):
        if all(CHALLENGES[a][0] != CHALLENGES[b][0] for a, b in zip(seq, seq[1:], strict=False)):
            out.append(seq)
    return out


def variants(track: list[tuple[Face, float]], width: int) -> dict[str, list[tuple[Face, float]]]:
    """The track as recorded, mirrored (keypoints reflected, left and right swapped) and played backwards."""

    def mirror(face: Face) -> Face:
        kp = face.keypoints[_MIRROR].copy()
        kp[:, 0] = width - kp[:, 0]
        return Face(face.box, face.score, kp)

    t_end = track[-1][1]
    mirrored = [(mirror(f), t) for f, t in track]
    backwards = [(f, t_end - t) for f, t in reversed(track)]
    return {
        "forward": track,
        "mirrored": mirrored,
        "backwards": backwards,
        "mirrored-backwards": [(mirror(f), t_end - t) for f, t in reversed(track)],
    }


def attempt(track: list[tuple[Face, float]], start: int, seq: tuple[str, ...], cfg: ChallengeConfig):
    """(outcome, reason, steps passed, decided before the track ended) when issued at frame `start`."""
    face0, t0 = track[start]
    try:  # as the camera loop does: the deciding frame's face is the start pose
        ch = Challenge(cfg, seq, issued_at=t0, start_face=face0)
    except ValueError:
        ch = Challenge(cfg, seq, issued_at=t0)
    for face, t in track[start + 1 :]:
        try:
            if ch.update(face, t) is not None:
                return ch.outcome, ch.reason, ch.step + (1 if ch.result else 0), True
        except ValueError:
            continue
    ch.abandon(track[-1][1])
    return ch.outcome, ch.reason, ch.step, ch.outcome == "timed_out"


def measure(tracks, cfg: ChallengeConfig) -> dict:
    seqs = sequences(cfg.steps)
    outcomes: Counter = Counter()
    reasons: Counter = Counter()
    reached: Counter = Counter()
    n = passed = decided = 0
    per_track = []
    funnel = [[0, 0, 0] for _ in range(cfg.steps)]  # per step: reached, passed, failed (decided, not passed)
    for name, track in tracks:
        tp = tn = 0
        for start in range(len(track) - 1):
            for seq in seqs:
                out, why, steps_done, final = attempt(track, start, seq, cfg)
                n += 1
                tn += 1
                outcomes[out] += 1
                reasons[why] += 1
                reached[steps_done] += 1
                for k in range(min(steps_done + 1, cfg.steps)):
                    funnel[k][0] += 1
                    if k < steps_done:
                        funnel[k][1] += 1
                    elif out != "abandoned":
                        funnel[k][2] += 1
                passed += out == "passed"
                tp += out == "passed"
                decided += final
        per_track.append((name, tn, tp))
    return {
        "attempts": n,
        "passed": passed,
        "pass_rate": passed / n if n else float("nan"),
        "decided": decided,
        "pass_rate_decided": passed / decided if decided else float("nan"),
        "outcomes": dict(outcomes),
        "reasons": {str(k): v for k, v in reasons.items()},
        "steps_passed": {int(k): v for k, v in sorted(reached.items())},
        "per_track": per_track,
        "funnel": funnel,
        "sequences": len(seqs),
    }


def upper95(k: int, n: int) -> float:
    """One-sided 95% upper bound of a rate seen k times in n: exact at k = 0 (1 - 0.05^(1/n), the "rule of
    three"), Wilson's score bound otherwise. Attempts at neighbouring frames of one track are not
    independent, so the bound is optimistic; the per-track counts show how concentrated the passes are."""
    if n == 0:
        return float("nan")
    if k == 0:
        return 1 - 0.05 ** (1 / n)
    z, p = 1.645, k / n
    centre = p + z * z / (2 * n)
    spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return min(1.0, (centre + spread) / (1 + z * z / n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--stride", type=int, default=1, help="feed every n-th frame (1: all, 25 fps)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    engine = FaceEngine(EngineConfig())
    tracks = []
    for video in LIVE_VIDEOS:
        for i, tr in enumerate(live_tracks(engine, args.data / video)):
            width = tr[0][0].shape[1]
            faces = [(face, t) for _, face, t in tr][:: args.stride]
            for kind, frames in variants(faces, width).items():
                tracks.append((f"{Path(video).name}#{i}/{kind}", frames))
    print(
        f"{len(tracks) // 4} face tracks of {len(LIVE_VIDEOS)} real videos, 4 playbacks each, "
        f"every {args.stride}. frame; {sum(len(t) for _, t in tracks)} frames in all"
    )
    results = {}
    for label, cfg in (("configured (ChallengeConfig defaults)", ChallengeConfig()), ("0.2 rule", OLD_RULE)):
        r = measure(tracks, cfg)
        results[label] = {**r, "config": cfg.model_dump()}
        print(
            f"\n## {label}: {cfg.steps} step(s), {r['sequences']} sequences, timeout {cfg.timeout_s} s, "
            f"onset {cfg.onset_min_s}-{cfg.onset_max_s} s at {cfg.onset_change} deg, "
            f"{cfg.min_change} deg held {cfg.hold_s} s"
        )
        print(
            f"attempts {r['attempts']}: passed {r['passed']} = {r['pass_rate']:.3%} "
            f"(95% upper bound {upper95(r['passed'], r['attempts']):.3%}); of the {r['decided']} decided "
            f"before their track ended: {r['pass_rate_decided']:.3%} "
            f"(upper {upper95(r['passed'], r['decided']):.3%})"
        )
        print("steps passed:", r["steps_passed"], "| outcomes:", r["outcomes"], "| reasons:", r["reasons"])
        first = None
        for k, (reach, ok, bad) in enumerate(r["funnel"], 1):
            rate = ok / (ok + bad) if ok + bad else None
            first = rate if k == 1 else first
            shown = "-" if rate is None else f"{rate:.2%}"
            print(
                f"step {k}: reached {reach}, passed {ok}, failed {bad}, abandoned {reach - ok - bad}; "
                f"pass rate when decided {shown}"
            )
        if first is not None and cfg.steps > 1:
            # Every step is a fresh random instruction at a moment the recording cannot know, as the first is.
            print(
                f"estimate if every step were as easy as the first: {first:.2%}^{cfg.steps} = "
                f"{first**cfg.steps:.1e} per attempt"
            )
        hits = sorted(((tp, tn, name) for name, tn, tp in r["per_track"] if tp), reverse=True)
        shown = ", ".join(f"{name} {tp}/{tn}" for tp, tn, name in hits[:6])
        print(
            f"playbacks with passes: {len(hits)} of {len(r['per_track'])}"
            + (f" (most: {shown})" if hits else "")
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
