#!/usr/bin/env python3
"""Open-set FNIR of several embedding spaces on the same random galleries (issue 12's before / after).

Every space embeds lfw-devtrain through the whole pipeline (cached like `face-agent eval`); each identity is
enrolled with its first photo; `--trials` random galleries per size, drawn once and used for every space, so
the differences between rows are the spaces', not the draws'. Per size and stranger rate: FNIR at the FPIR
threshold of the same searches ("oracle"), and FPIR (as a multiple of the rate) and FNIR at the threshold the
agent derives from the space's own far_curve for that many faces (what the camera loop would use).

    nice python scripts/openset_compare.py --trials 30 [--spaces plain,flip,flip+mesh]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.calibrate import DEFAULT_CACHE, dataset_embeddings, make_engine  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.metrics import threshold_at_far  # noqa: E402
from agent.evaluation.openset import enrolment  # noqa: E402
from agent.gallery.thresholds import engine_thresholds  # noqa: E402

SPACES = {  # name -> (flip, landmarks)
    "plain": (False, "detector"),  # the 0.2 default: detector keypoints, no flip
    "flip": (True, "detector"),  # the default from 2026-12-03
    "flip+mesh": (True, "mesh"),  # the default from 2026-12-07
}


def galleries(n_ids: int, sizes: list[int], trials: int, seed: int) -> dict[int, list[np.ndarray]]:
    """For each size, `trials` random permutations of the identities (the first g + 1 columns are used)."""
    rng = np.random.default_rng(seed)
    return {g: [rng.permutation(n_ids)[: g + 1] for _ in range(trials)] for g in sizes}


def searches(scores: np.ndarray, own: np.ndarray, mated: np.ndarray, perm: np.ndarray, g: int):
    """(stranger best scores, mated own scores, mated hits) of one gallery: the first g columns of `perm`;
    a probe whose identity is among them is a stranger against the other g - 1 plus the spare column."""
    pos = np.full(scores.shape[1], -1)
    pos[perm] = np.arange(len(perm))
    where = np.where(own >= 0, pos[np.maximum(own, 0)], -1)
    inside = (where >= 0) & (where < g)
    s = scores[:, perm].copy()
    rows = np.flatnonzero(where >= 0)
    s[rows, where[rows]] = -np.inf  # never one's own identity as a stranger
    s[~inside, g] = -np.inf  # the spare column only for those whose own column was removed
    stranger = s.max(1)
    sel = mated & inside
    gallery = scores[sel][:, perm[:g]]
    own_score = gallery[np.arange(len(gallery)), where[sel]]
    hit = np.argmax(gallery, 1) == where[sel]
    return stranger, own_score, hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default=",".join(SPACES))
    ap.add_argument("--sizes", default="100,500,1000,2000")
    ap.add_argument("--rates", default="1e-2,1e-3")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--runtime", default="openvino")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    rates = [float(v) for v in args.rates.split(",")]
    root = shared_data_dir(ROOT) / "lfw-devtrain"
    draws = None
    for name in args.spaces.split(","):
        flip, landmarks = SPACES[name]
        engine = make_engine(None, "dlib-resnet-v1", "int8", args.runtime, flip=flip, landmarks=landmarks)
        ds, emb, found = dataset_embeddings(engine, root, DEFAULT_CACHE, progress=True)
        keep = np.flatnonzero(found)
        e, lab = emb[keep].astype(np.float32), ds.identities[keep]
        enr = enrolment(lab, np.ones(len(lab), bool), 1)
        ids = lab[enr]
        col = {int(i): k for k, i in enumerate(ids)}
        own = np.array([col.get(int(v), -1) for v in lab])
        scores = e @ e[enr].T
        draws = draws or galleries(len(ids), sizes, args.trials, args.seed)
        rule = engine_thresholds(engine)
        print(f"{engine.model_id} ({name}), {args.trials} galleries per size")
        for g in sizes:
            parts = [searches(scores, own, ~enr, perm, g) for perm in draws[g]]
            stranger, own_score, hit = (np.concatenate(p) for p in zip(*parts, strict=True))
            cells = []
            for rate in rates:
                oracle = threshold_at_far(stranger, rate)
                agent = rule.threshold(rate, g).cosine
                fnir_o = 1 - np.mean(hit & (own_score >= oracle))
                fnir_a = 1 - np.mean(hit & (own_score >= agent))
                fpir_a = np.mean(stranger >= agent) / rate
                cells.append(
                    f"rate {rate:g}: FNIR {fnir_o:6.1%} oracle, {fnir_a:6.1%} at the agent's ({fpir_a:.2f}x)"
                )
            print(f"  G {g:5d}  " + "  |  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
