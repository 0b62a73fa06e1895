#!/usr/bin/env python3
"""The camera loop's person rules on people the curves never saw: mean rule against max rule (issue 12).

lfw-devtrain identities are split in two random halves. On half A the agent's own calibration code
(agent/evaluation/calibrate.person_far_curves) measures the pair FAR curves of "one face against the mean of
k faces", k = 1..5 (k = 1 is the one-face curve). On half B the agent's open-set protocol
(agent/evaluation/openset.summary) enrols each identity with its first 1, 2 or 3 photos and scores persons
by the best face (max rule: N = faces) or by the FAR-mapped cosine to the mean of their faces (mean rule:
N = persons), at the thresholds the agent derives from half A's curves for max_stranger_rate 1e-2 and 1e-3.
Printed per row: the measured FPIR as a multiple of the configured rate, and FNIR there.

    python scripts/openset_mean.py [--embeddings emb.npz] [--trials 10] [--seed 0]

`--embeddings`: an `emb-*.npz` of the eval cache (emb, found) of the default space; without it the dataset
is embedded first (about a minute). docs/openset.md has the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.calibrate import dataset_embeddings, make_engine, person_far_curves  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.lfw import load_dataset  # noqa: E402
from agent.evaluation.openset import summary  # noqa: E402
from agent.gallery.thresholds import PersonCurves, StrangerThresholds  # noqa: E402

SIZES = (50, 100, 200, 500, 1000, 1900)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--embeddings", type=Path, help="emb-*.npz of the eval cache (emb, found)")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--multi",
        action="store_true",
        help="rows with 2 or 3 photos use only half B's identities that have more photos than that (every "
        "enrolled person has k faces: the k-curves are what is tested; fewer identities and searches)",
    )
    args = ap.parse_args()
    root = args.data / "lfw-devtrain"
    ds = load_dataset(root)
    if args.embeddings is not None:
        data = np.load(args.embeddings)
        emb, found = data["emb"], data["found"]
    else:
        engine = make_engine(args.models_dir, "dlib-resnet-v1", "int8", "openvino", flip=True)
        _, emb, found = dataset_embeddings(engine, root, progress=True)
    labels = ds.identities
    rng = np.random.default_rng(args.seed)
    ids = np.unique(labels)
    in_a = np.isin(labels, rng.permutation(ids)[: len(ids) // 2])
    emb_nan = np.where(found[:, None], emb, np.nan)

    curves = person_far_curves(emb_nan[in_a], labels[in_a], ks=(1, 2, 3, 4, 5))
    for k, c in curves.items():
        print(
            f"half A, k={k}: {c['templates']} templates, {c['impostor_pairs']} impostor pairs, "
            f"curve down to FAR {c['far'][-1]:g}"
        )
    single = StrangerThresholds(curves["1"])
    mean = PersonCurves(single, {k: c for k, c in curves.items() if k != "1"})

    b = ~in_a
    eb, lb, fb = np.nan_to_num(emb[b]), labels[b], found[b]
    print(
        f"half B: {len(np.unique(lb[fb]))} identities with a face, {int(fb.sum())} images; "
        f"{args.trials} random galleries per size"
    )
    print("photos  rule  persons   rate 1e-2: FPIR/rate  FNIR    rate 1e-3: FPIR/rate  FNIR")
    for photos in (1, 2, 3):
        keep = np.ones(len(lb), bool)
        if args.multi and photos > 1:
            ids_b, counts = np.unique(lb[fb], return_counts=True)
            keep = np.isin(lb, ids_b[counts > photos])
            print(
                f"  {photos} photos: {len(ids_b[counts > photos])} identities with more, "
                f"{int((keep & fb).sum())} images"
            )
        n_ids = len(np.unique(lb[keep & fb]))
        sizes = [g for g in SIZES if g < n_ids] or [n_ids - 1]
        for rule, cv in (("max", None), ("mean", mean)):
            if photos == 1 and rule == "mean":
                continue  # one face: the mean is the face
            table = summary(
                eb[keep],
                lb[keep],
                fb[keep],
                sizes=sizes,
                trials=args.trials,
                stranger=single,
                per_person=photos,
                curves=cv,
            )
            for g, row in table.items():
                print(
                    f"{photos:6d}  {rule:4s}  {int(g):7d}   "
                    f"{row['agent_fpir@0.01'] / 1e-2:15.2f}x  {row['agent_fnir@0.01'] * 100:5.1f}%   "
                    f"{row['agent_fpir@0.001'] / 1e-3:15.2f}x  {row['agent_fnir@0.001'] * 100:5.1f}%"
                    f"   ({row['mated_searches']} mated searches)"
                )


if __name__ == "__main__":
    main()
