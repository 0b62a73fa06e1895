"""`face-agent eval` and `face-agent bench`: run every configuration, print a table, write JSON and plots."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from agent.evaluation.calibrate import evaluate, make_engine, result_dict
from agent.evaluation.metrics import FARS, kfold_accuracy
from agent.inference.manifest import Manifest


def _embedders(requested: list[str] | None) -> list[str]:
    return requested or Manifest().names("embedder")


def run_eval(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest()
    results = []
    for model in _embedders(args.models):
        for precision in args.precisions:
            if precision not in manifest.variants(model):
                print(f"skip {model}/{precision}: not built")
                continue
            for runtime in args.runtimes:
                engine = make_engine(None, model, precision, runtime, args.detector)
                res = evaluate(engine, args.data, args.cache, progress=True)
                results.append(res)
                print(_row(res), flush=True)
    if args.baseline_dlib:
        base = dlib_pair_accuracy(args.data)
        print(
            f"dlib face_recognition pipeline (HOG + 5-point + ResNet): "
            f"pair accuracy {base['pair_accuracy']:.2%}"
            f" ({base['missed']} images without a face)"
        )
    (args.out / "eval.json").write_text(json.dumps([result_dict(r) for r in results], indent=2))
    _plot_roc(results, args.out / "roc.png")
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'roc.png'}")
    return 0


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


def _bench_images(data: Path) -> list[Path]:
    folder = data / "faces" / "face_recognition" / "examples"
    return sorted(p for p in folder.glob("*.jpg"))[:12]


def run_bench(args: argparse.Namespace) -> int:
    from agent.cli.bench import run_isolated
    from agent.inference.runtime.cpu import cpu_info

    images = [str(p) for p in _bench_images(args.data)]
    if not images:
        print(f"no benchmark photos under {args.data}")
        return 2
    cpu = cpu_info()
    # Whether INT8 beats FP32 depends on the CPU's 8-bit dot-product instructions: say which CPU this is.
    print(f"CPU: {cpu.describe()}", flush=True)
    manifest = Manifest()
    rows = []
    t0 = time.time()
    for model in _embedders(args.models):
        for precision in args.precisions:
            if precision not in manifest.variants(model):
                continue
            for runtime in args.runtimes:
                for det in args.detectors:
                    res = run_isolated(
                        [
                            "engine",
                            "--runtime",
                            runtime,
                            "--model",
                            model,
                            "--precision",
                            precision,
                            "--detector",
                            det,
                            "--repeats",
                            str(args.repeats),
                            "--threads",
                            str(args.threads),
                            *images,
                        ]
                    )
                    rows.append(res)
                    print(json.dumps(res), flush=True)
    if not args.no_dlib:
        res = run_isolated(["dlib", "--repeats", str(args.repeats), *images])
        rows.append(res)
        print(json.dumps(res), flush=True)
    for row in rows:  # a failed configuration's row says which machine it failed on too
        row.setdefault("cpu", cpu.as_dict())
    print(_bench_table(rows))
    print(f"({len(images)} photos letterboxed to 640x480, {time.time() - t0:.0f}s, CPU: {cpu.describe()})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


def _bench_table(rows: list[dict]) -> str:
    dlib = next(
        (r for r in rows if r.get("config", "").startswith("dlib baseline") and "error" not in r), None
    )
    base = dlib["faces_per_s_single"] if dlib and dlib.get("faces_per_s_single") else None
    lines = [
        "| configuration | detect 640x480 median / p90 ms | embed 1 face median / p90 ms | faces/s batch 8 "
        "| x dlib faces/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | |")
            continue
        d, e = r["detect_640x480"], r.get("embed_1_face") or {}
        fps = r.get("batch8_faces_per_s") or r.get("faces_per_s_single")
        ratio = f"{fps / base:.1f}x" if base and fps else "-"
        lines.append(
            f"| {r['config']} | {d['median_ms']} / {d['p90_ms']} | {e.get('median_ms')} / "
            f"{e.get('p90_ms')} | {fps} | {ratio} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)
