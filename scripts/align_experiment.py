#!/usr/bin/env python3
"""Does a better alignment lower FNIR at a fixed stranger rate? (issue 12, one enrolment photo per person)

The dlib ResNet was trained on dlib's 5-point chips; the detector-keypoint alignment uses BlazeFace's 4
coarse keypoints (eyes, nose tip, mouth). This script embeds every lfw-devtrain face with other alignments and
runs the open-set protocol of agent/evaluation/openset.py on each (FNIR at the FPIR-1e-3 threshold of the same
run, "oracle", G = 100 / 500 / 2000, 10 random galleries), plus TAR at pair FAR 1e-4 / 1e-5. It is how the
face-mesh alignment (now the default, docs/models.md) was chosen; the figures are there.

  keypoints   the detector-keypoint alignment (BlazeFace keypoints onto the manifest's `align` template)
  mesh-<set>  a least-squares similarity of face-mesh points onto a template: where those mesh points land
              in the keypoint chips on average over all faces (`--template`: another one); `@s` scales it
  a+b         the normalised mean of two methods' embeddings
  dlib        dlib's own 5-point predictor and chip on the BlazeFace box (needs dlib at build time)

    python scripts/align_experiment.py [--limit N] [--methods keypoints,mesh-eyes-nose,...] [--save DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.calibrate import make_engine  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.lfw import central_face, load_dataset  # noqa: E402
from agent.evaluation.metrics import threshold_at_far  # noqa: E402
from agent.evaluation.openset import run_searches  # noqa: E402

# MediaPipe mesh indices. dlib's 5 points: both corners of each eye and the bottom of the nose.
EYES_NOSE = [33, 133, 263, 362, 2]
# Points that move little with expression: eye corners and lids, brows, nose bridge and tip, nostrils.
RIGID = [
    33,
    133,
    263,
    362,
    159,
    145,
    386,
    374,
    70,
    105,
    107,
    300,
    334,
    336,
    168,
    6,
    197,
    195,
    5,
    4,
    1,
    2,
    98,
    327,
    129,
    358,
]
SETS = {
    "mesh-eyes-nose": EYES_NOSE,
    "mesh-eyes-nose-mouth": EYES_NOSE + [61, 291],
    "mesh-rigid": RIGID,
    "mesh-all": list(range(468)),
}


def faces_of(engine, ds, limit):
    out = []
    for i, path in enumerate(ds.paths[:limit] if limit else ds.paths):
        img = engine.load(path.read_bytes())
        faces = engine.detector.detect(img.pixels) or engine.detector.detect(img.pixels, score_threshold=0.25)
        out.append((i, img.pixels, central_face(faces, img.width, img.height)))
    return out


def embed_with(engine, items, transform):
    import cv2

    size = int(engine.embedder.align_spec["size"])
    emb = np.full((len(items), engine.embedder.dim), np.nan, np.float32)
    found = np.zeros(len(items), bool)
    chips, rows = [], []
    for k, (_, px, face) in enumerate(items):
        m = transform(px, face) if face is not None else None
        if m is not None:
            chips.append(m if m.shape[:2] == (size, size) else cv2.warpAffine(px, m, (size, size)))
            rows.append(k)
            found[k] = True
        if len(chips) >= 32 or (k == len(items) - 1 and chips):
            emb[rows] = engine.embedder.embed_chips(chips)
            chips, rows = [], []
    return emb, found


def _from_mesh(pts: np.ndarray):
    """A Face whose box is the mesh points' bounding box and whose eyes are the mesh's eye centres."""
    from agent.types import Box, Face

    x1, y1 = pts.min(0)
    x2, y2 = pts.max(0)
    kps = np.zeros((6, 2), np.float32)
    kps[0] = pts[[33, 133]].mean(0)
    kps[1] = pts[[263, 362]].mean(0)
    return Face(Box(float(x1), float(y1), float(x2), float(y2)), 1.0, kps)


def _dlib_chipper():
    """dlib's own chip: HOG box nearest the centre (else the BlazeFace box), 5-point predictor, padding
    0.25."""
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def chip(px, f):
        rgb = np.ascontiguousarray(px[..., ::-1])
        h, w = rgb.shape[:2]
        rects = det(rgb, 1)
        if rects:
            rect = min(rects, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        else:
            x1, y1, x2, y2 = (int(round(v)) for v in (f.box.x1, f.box.y1, f.box.x2, f.box.y2))
            rect = dlib.rectangle(x1, y1, x2, y2)
        return np.ascontiguousarray(dlib.get_face_chip(rgb, sp(rgb, rect), size=150, padding=0.25)[..., ::-1])

    return chip


def report(name, emb, found, labels):
    keep = np.flatnonzero(found)
    e, lab = emb[keep], labels[keep]
    s = e @ e.T
    iu = np.triu_indices(len(e), 1)
    same = lab[iu[0]] == lab[iu[1]]
    sc = s[iu]
    imp, gen = sc[~same], sc[same]
    tars = [float(np.mean(gen >= threshold_at_far(imp, f))) for f in (1e-4, 1e-5)]
    res = run_searches(
        np.where(found[:, None], emb, 0).astype(np.float32),
        labels,
        found,
        [g for g in (100, 500, 2000) if g < len(np.unique(labels[found]))],
    )
    fn = {g: r.fnir(r.threshold_at_fpir(1e-3)) for g, r in res.items()}
    print(
        f"{name:16s} faces {len(keep)}  TAR@1e-4 {tars[0]:.3f} @1e-5 {tars[1]:.3f}  FNIR@FPIR1e-3 "
        + " ".join(f"G{g} {v:.3f}" for g, v in fn.items()),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--methods", default="keypoints,mesh-eyes-nose,mesh-rigid,mesh-all")
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--template", help=".npy (468, 2): mesh-point template in chip pixels instead of the fit")
    ap.add_argument(
        "--second-pass", action="store_true", help="run the mesh twice (crop from its own points)"
    )
    ap.add_argument("--save", help="folder for emb-<method>.npz (emb, found), for openset_experiments.py")
    args = ap.parse_args()
    from agent.inference.align import chip_transform, similarity_transform
    from agent.inference.mesh import open_face_mesh

    engine = make_engine(
        None, "dlib-resnet-v1", "int8", "openvino", flip=not args.no_flip, landmarks="detector"
    )
    mesh = open_face_mesh(engine.config)
    spec = engine.embedder.align_spec
    ds = load_dataset(shared_data_dir(ROOT) / "lfw-devtrain")
    t0 = time.perf_counter()
    items = faces_of(engine, ds, args.limit)
    labels = ds.identities[: len(items)]
    n_found = sum(f is not None for _, _, f in items)
    print(f"detected {n_found} of {len(items)} in {time.perf_counter() - t0:.0f} s")
    methods = args.methods.split(",")
    meshes = {}
    if any(m.startswith("mesh") for m in methods):
        t0 = time.perf_counter()
        meshes = {
            k: mesh.landmarks(px, f).points[:, :2] for k, (_, px, f) in enumerate(items) if f is not None
        }
        if args.second_pass:  # the mesh again, on the crop its own first answer gives (as MediaPipe tracks)
            meshes = {
                k: mesh.landmarks(items[k][1], _from_mesh(pts)).points[:, :2] for k, pts in meshes.items()
            }
        print(f"mesh on {len(meshes)} faces in {time.perf_counter() - t0:.0f} s")
        # Template: where the mesh points land in the shipped chips, on average over the faces.
        chip_pts = []
        for k, (_, _, f) in enumerate(items):
            if f is not None:
                m = chip_transform(f, spec)
                chip_pts.append(meshes[k] @ m[:, :2].T + m[:, 2])
        template = np.mean(chip_pts, axis=0)
        if args.template:  # e.g. where the mesh points land in dlib's own chips (fitted elsewhere)
            template = np.load(args.template)
    index = {id(f): k for k, (_, _, f) in enumerate(items)}
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in methods:
        base, _, scale = name.partition("@")  # "@s": the template scaled by s about the chip centre
        s = float(scale or 1.0)
        if "+" in name:  # the mean of methods embedded before, e.g. keypoints+mesh-eyes-nose
            parts = [done[p] for p in name.split("+")]
            emb = np.mean([p[0] for p in parts], axis=0)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            found = np.logical_and.reduce([p[1] for p in parts])
            report(name, emb, found, labels)
            continue
        if base == "keypoints":

            def tr(px, f):
                return chip_transform(f, spec)
        elif base in SETS:
            tpl = (template - 75.0) * s + 75.0

            def tr(px, f, idx=SETS[base], tpl=tpl):
                return similarity_transform(meshes[index[id(f)]][idx], tpl[idx])
        elif base == "dlib":
            tr = _dlib_chipper()
        else:
            raise SystemExit(f"unknown method {name}")
        t0 = time.perf_counter()
        emb, found = embed_with(engine, items, tr)
        done[name] = (emb, found)
        if args.save:
            np.savez(Path(args.save) / f"emb-{name}.npz", emb=emb, found=found)
        print(f"  {name}: embedded in {time.perf_counter() - t0:.0f} s", flush=True)
        report(name, emb, found, labels)


if __name__ == "__main__":
    main()
