#!/usr/bin/env python3
"""Compare the faces of scripts/arm64/faces.py: the x86 file (first) against each arm64 file, face by face.

Per emulated CPU, runtime, precision and space (plain / flip):
  - cosine between the arm64 and the x86 embedding of the same face: min / median over the 40 test faces and
    over every face of the run;
  - pair accuracy (LFW 10-fold protocol, agent.evaluation.metrics.kfold_accuracy) on the selected pairs, x86
    and arm64, and "hub x86 -> device arm64": the first image of each pair embedded on x86 (a gallery synced
    from an x86 hub), the second on arm64 (the probe the device computes);
  - the largest change of a pair's score, and how many pairs change side at the manifest's thresholds of that
    space (FAR 1e-3 and 1e-4), arm64 against x86 and hub x86 -> device arm64;
and the detector's agreement (faces found, largest box / keypoint difference in pixels).

    python scripts/arm64/compare.py --models-dir models x86.npz arm64-cortex-a76.npz ... [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agent.evaluation.metrics import kfold_accuracy, pair_scores
from agent.inference.manifest import Manifest


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _stats(v: np.ndarray) -> dict:
    v = v[~np.isnan(v)]
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "min": float(v.min()), "median": float(np.median(v))}


def _accuracy(scores: np.ndarray, same: np.ndarray) -> float | None:
    if len(same) < 20 or same.all() or not same.any():
        return None
    return kfold_accuracy(np.where(np.isnan(scores), -1.0, scores), same)[0]


def compare(ref: dict, arm: dict, manifest: Manifest, model: str) -> dict:
    # The arm64 file may hold fewer images (`--pairs 0`: the test faces only): x86 rows are taken by path.
    where = {p: i for i, p in enumerate(ref["paths"])}
    missing = [p for p in arm["paths"] if p not in where]
    if missing:
        raise SystemExit(f"{len(missing)} arm64 images are not in the x86 file (e.g. {missing[0]})")
    rows = np.array([where[p] for p in arm["paths"]], int)
    ref = {k: (v[rows] if k not in ("paths", "test", "pairs", "same", "meta") else v) for k, v in ref.items()}
    test, pairs, same = arm["test"], arm["pairs"], arm["same"].astype(bool)
    meta = json.loads(str(arm["meta"]))
    res: dict = {
        "cpu": meta["cpu"],
        "versions": meta["versions"],
        "seconds": meta["seconds"],
        "load": meta["load"],
        "detector": {},
        "spaces": {},
    }
    runtimes = sorted({k.split("/")[0] for k in arm if k.endswith("/found")})
    for rt in runtimes:
        fx, fa = ref[f"{rt}/found"], arm[f"{rt}/found"]
        both = fx & fa
        res["detector"][rt] = {
            "found_x86": int(fx.sum()),
            "found_arm64": int(fa.sum()),
            "found_both": int(both.sum()),
            "box_max_px": float(np.nanmax(np.abs(ref[f"{rt}/box"][both] - arm[f"{rt}/box"][both]))),
            "kps_max_px": float(np.nanmax(np.abs(ref[f"{rt}/kps"][both] - arm[f"{rt}/kps"][both]))),
            "score_max": float(np.nanmax(np.abs(ref[f"{rt}/score"][both] - arm[f"{rt}/score"][both]))),
        }
    for key in sorted(k for k in arm if k.count("/") == 2):
        rt, precision, mode = key.split("/")
        x, a = ref[key], arm[key]
        cos = _cos(x, a)
        thr = manifest.info(model, precision, rt, verify=False, flip=mode == "flip").thresholds
        row = {"cos_test": _stats(cos[test]), "cos_all": _stats(cos)}
        if precision == "int8" and f"{rt}/fp32/{mode}" in ref:
            # How far INT8 sits from the FP32 original, on x86 and on this CPU (both against x86's FP32).
            xf = ref[f"{rt}/fp32/{mode}"]
            row["int8_to_x86_fp32"] = {"x86": _stats(_cos(x, xf)), "arm64": _stats(_cos(a, xf))}
        if len(pairs):
            sx, sa = pair_scores(x, pairs), pair_scores(a, pairs)
            cross = _cos(x[pairs[:, 0]], a[pairs[:, 1]])  # gallery face from the x86 hub, probe on arm64
            row.update(
                pairs=len(pairs),
                acc_x86=_accuracy(sx, same),
                acc_arm64=_accuracy(sa, same),
                acc_hub_x86_probe_arm64=_accuracy(cross, same),
                score_max_change=float(np.nanmax(np.abs(sa - sx))),
                score_max_change_cross=float(np.nanmax(np.abs(cross - sx))),
            )
            for far in ("1e-3", "1e-4"):
                t = thr[far]
                row[f"flips@{far}"] = int(((sa >= t) != (sx >= t)).sum())
                row[f"flips_cross@{far}"] = int(((cross >= t) != (sx >= t)).sum())
                row[f"accepted_x86@{far}"] = int((sx >= t).sum())
        res["spaces"][key] = row
    # The two runtimes against each other on this CPU (the x86 figure beside it): one gallery, either runtime.
    for precision in ("int8", "fp32"):
        for mode in ("plain", "flip"):
            k1, k2 = f"openvino/{precision}/{mode}", f"onnxruntime/{precision}/{mode}"
            if k1 in arm and k2 in arm:
                res["spaces"].setdefault(f"openvino-vs-onnxruntime/{precision}/{mode}", {}).update(
                    cos_all_arm64=_stats(_cos(arm[k1], arm[k2])), cos_all_x86=_stats(_cos(ref[k1], ref[k2]))
                )
    return res


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.2f}%" if pct else f"{v:.6f}"


def print_report(label: str, res: dict) -> None:
    cpu = res["cpu"]
    qemu_cpu = cpu.get("qemu_cpu") or "(default max)"
    print(f"\n## arm64 {label}: QEMU_CPU={qemu_cpu}, HWCAP {' '.join(cpu.get('hwcap', []))}")
    print(f"   versions: {res['versions']}")
    for rt, d in res["detector"].items():
        print(
            f"   detector {rt}: found x86 {d['found_x86']} / arm64 {d['found_arm64']}; largest "
            f"box difference {d['box_max_px']:.4f} px, keypoints {d['kps_max_px']:.4f} px, "
            f"score {d['score_max']:.2e}"
        )
    head = (
        f"   {'space':<28} {'cos 40 min':>10} {'median':>9} {'cos all min':>11} {'median':>9} "
        f"{'acc x86':>8} {'acc arm':>8} {'hub->arm':>8} {'max dS':>8} {'flips 1e-3/1e-4':>15}"
    )
    print(head)
    for key, r in res["spaces"].items():
        if "cos_test" not in r:
            continue
        ct, ca = r["cos_test"], r["cos_all"]
        flips = f"{r.get('flips@1e-3', '-')}/{r.get('flips@1e-4', '-')}" if "pairs" in r else "-"
        print(
            f"   {key:<28} {_fmt(ct.get('min')):>10} {_fmt(ct.get('median')):>9} "
            f"{_fmt(ca.get('min')):>11} {_fmt(ca.get('median')):>9} {_fmt(r.get('acc_x86'), True):>8} "
            f"{_fmt(r.get('acc_arm64'), True):>8} {_fmt(r.get('acc_hub_x86_probe_arm64'), True):>8} "
            f"{r.get('score_max_change', float('nan')):8.5f} {flips:>15}"
        )
    for key, r in res["spaces"].items():
        if "int8_to_x86_fp32" in r:
            d = r["int8_to_x86_fp32"]
            print(
                f"   {key} against the x86 FP32 embedding, min / median: x86 {d['x86']['min']:.6f} / "
                f"{d['x86']['median']:.6f}, arm64 {d['arm64']['min']:.6f} / {d['arm64']['median']:.6f}"
            )
    for key, r in res["spaces"].items():
        if key.startswith("openvino-vs-onnxruntime"):
            arm, x86 = r["cos_all_arm64"]["min"], r["cos_all_x86"]["min"]
            print(f"   {key}: min cosine arm64 {arm:.6f}, x86 {x86:.6f}")
    print(f"   wall times under qemu-user emulation on x86 (s): {res['seconds']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", type=Path, help="the x86 file")
    p.add_argument("arm", type=Path, nargs="+", help="arm64 files")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    ref = dict(np.load(args.ref))
    meta = json.loads(str(ref["meta"]))
    manifest = Manifest(args.models_dir)
    print(
        f"x86 reference: {meta['cpu']} {meta['versions']}; {meta['images']} images, "
        f"{len(ref['test'])} test faces, {len(ref['pairs'])} pairs"
    )
    out = {"x86": {"cpu": meta["cpu"], "versions": meta["versions"], "seconds": meta["seconds"]}}
    arms = {}
    for path in args.arm:
        label = path.stem
        arms[label] = dict(np.load(path))
        out[label] = res = compare(ref, arms[label], manifest, meta["model"])
        print_report(label, res)
    labels = list(arms)
    for i, la in enumerate(labels):  # emulated CPU models against each other, on the faces both embedded
        for lb in labels[i + 1 :]:
            a, b = arms[la], arms[lb]
            where = {p: k for k, p in enumerate(b["paths"])}
            ia = np.array([k for k, p in enumerate(a["paths"]) if p in where], int)
            ib = np.array([where[a["paths"][k]] for k in ia], int)
            keys = sorted(k for k in a if k.count("/") == 2 and k in b)
            mins = {k: float(np.nanmin(_cos(a[k][ia], b[k][ib]))) for k in keys}
            out[f"{la} vs {lb}"] = {"faces": int(len(ia)), "cos_min": mins}
            print(
                f"\n{la} vs {lb}, {len(ia)} faces, min cosine: "
                + ", ".join(f"{k} {v:.6f}" for k, v in mins.items())
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
