"""`face-agent eval`: run every configuration, print a table, write JSON and plots."""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from agent.evaluation import openset
from agent.evaluation.calibrate import dataset_embeddings, evaluate, make_engine, result_dict
from agent.evaluation.metrics import FARS, kfold_accuracy
from agent.gallery.thresholds import engine_thresholds, person_rule
from agent.inference.manifest import Manifest


def _embedders(requested: list[str] | None) -> list[str]:
    return requested or Manifest().names("embedder")


def run_eval(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest()
    results = []
    opensets: dict[str, dict] = {}
    for model in _embedders(args.models):
        for precision in args.precisions:
            if precision not in manifest.variants(model):
                print(f"skip {model}/{precision}: not built")
                continue
            for runtime, flip, marks in itertools.product(args.runtimes, _flips(args), _landmarks(args)):
                if marks == "mesh" and not manifest.has_mesh_alignment(model):
                    print(f"skip {model}: no face-mesh alignment in the manifest")
                    continue
                engine = make_engine(
                    None, model, precision, runtime, args.detector, flip=flip, landmarks=marks
                )
                t0 = time.perf_counter()
                data = dataset_embeddings(engine, args.data, args.cache, progress=True)
                res = evaluate(engine, args.data, embeddings=data)
                res.seconds = time.perf_counter() - t0  # embedding included, as before
                results.append(res)
                print(_row(res), flush=True)
                for label, table in _opensets(engine, data).items():
                    opensets[f"{res.model_id} {res.runtime}{label}"] = table
                    print(_openset_rows(table, label or ", one photo per person"), flush=True)
    if args.baseline_dlib:
        base = dlib_pair_accuracy(args.data)
        print(
            f"dlib face_recognition pipeline (HOG + 5-point + ResNet): "
            f"pair accuracy {base['pair_accuracy']:.2%}"
            f" ({base['missed']} images without a face)"
        )
    (args.out / "eval.json").write_text(json.dumps([result_dict(r) for r in results], indent=2))
    (args.out / "openset.json").write_text(json.dumps(opensets, indent=2))
    _plot_roc(results, args.out / "roc.png")
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'roc.png'}")
    return 0


def _flips(args: argparse.Namespace) -> list[bool]:
    choice = getattr(args, "flip", "on")
    return {"on": [True], "off": [False], "both": [False, True]}[choice]


def _landmarks(args: argparse.Namespace) -> list[str]:
    choice = getattr(args, "landmarks", "auto")
    return ["detector", "mesh"] if choice == "both" else [choice]


def _opensets(engine, data: tuple) -> dict[str, dict]:  # noqa: ANN001 - FaceEngine
    """Open-set FNIR at FPIR 1e-2 / 1e-3 per gallery size, on the embeddings pair accuracy used: one photo
    per person, and 2 and 3 photos by the best face (max rule) and, where the manifest has person_curves,
    by the mean rule (the camera loop's default then)."""
    ds, emb, found = data
    single = engine_thresholds(engine)
    curves = person_rule(engine, "auto", single)
    out = {"": openset.summary(emb, ds.identities, found, stranger=single)}
    for photos in (2, 3):
        out[f", {photos} photos, max rule"] = openset.summary(
            emb, ds.identities, found, stranger=single, per_person=photos
        )
        if curves is not None:
            out[f", {photos} photos, mean rule"] = openset.summary(
                emb, ds.identities, found, stranger=single, per_person=photos, curves=curves
            )
    return out


def _openset_rows(table: dict, label: str) -> str:
    lines = [f"  open set{label} (FNIR at FPIR 1e-2 / 1e-3):"]
    for size, row in table.items():
        lines.append(
            f"    {int(size):5d} persons: FNIR {row['fnir@0.01'] * 100:5.1f}% / "
            f"{row['fnir@0.001'] * 100:5.1f}%"
            f"  (cosine {row['cosine@0.01']:.4f} / {row['cosine@0.001']:.4f}; "
            f"{row['stranger_searches']} stranger, {row['mated_searches']} mated searches)"
        )
        if "agent_fpir@0.001" in row:
            lines.append(
                f"          agent's thresholds for rate 1e-2 / 1e-3: FPIR {row['agent_fpir@0.01']:.4f} / "
                f"{row['agent_fpir@0.001']:.4f}, FNIR {row['agent_fnir@0.01'] * 100:.1f}% / "
                f"{row['agent_fnir@0.001'] * 100:.1f}%"
            )
    return "\n".join(lines)


def _row(res) -> str:  # noqa: ANN001 - EvalResult
    tars = "  ".join(f"TAR@{k} {v:.4f}" for k, v in res.tar.items())
    return (
        f"{res.model_id:24s} {res.runtime:12s} acc {res.pair_accuracy * 100:.2f}% "
        f"(+-{res.pair_accuracy_std * 100:.2f})  missed {res.missed}  {tars}  [{res.seconds:.0f}s]"
    )


def _plot_roc(results: list, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no ROC plot (pip install face-agent[eval])")
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        ax.semilogx(r.roc["far"], r.roc["tar"], label=f"{r.model_id} {r.runtime} ({r.pair_accuracy:.2%})")
    for far in FARS:
        ax.axvline(far, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("false accept rate (impostor pairs)")
    ax.set_ylabel("true accept rate (genuine pairs)")
    ax.set_title("ROC on lfw-devtrain, all pairs, whole pipeline")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dlib_pair_accuracy(root: Path) -> dict:
    """The face_recognition-style pipeline (dlib HOG detector upsample 1, 5-point chip, ResNet descriptor,
    Euclidean distance) on the pairs file, as the accuracy baseline."""
    import cv2
    import dlib
    import face_recognition_models as frm

    from agent.evaluation.lfw import load_dataset, read_pairs

    ds = load_dataset(root)
    pairs, same = read_pairs(root / "pairsDevTrain.txt", ds)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    emb: dict[int, np.ndarray | None] = {}
    for i in np.unique(pairs):
        rgb = cv2.cvtColor(cv2.imread(str(ds.paths[i])), cv2.COLOR_BGR2RGB)
        rects = det(rgb, 1)
        if not rects:
            emb[i] = None
            continue
        rect = min(rects, key=lambda r: (r.center().x - 125) ** 2 + (r.center().y - 125) ** 2)
        emb[i] = np.array(rec.compute_face_descriptor(rgb, sp(rgb, rect), 0))
    scores = np.array(
        [
            -np.linalg.norm(emb[a] - emb[b]) if emb[a] is not None and emb[b] is not None else -9.0
            for a, b in pairs
        ]
    )
    acc, _, thr = kfold_accuracy(scores, same)
    return {"pair_accuracy": acc, "distance_threshold": -thr, "missed": sum(v is None for v in emb.values())}
