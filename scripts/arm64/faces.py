#!/usr/bin/env python3
"""Detect and embed a fixed set of real faces on every runtime and precision, and save it all to one .npz.

The same driver runs on x86 (the project's .venv) and inside the arm64 root (the installed package), so the
two files compare face by face (scripts/arm64/compare.py). The faces: the 40 test faces of the engine tests
and of scripts/int8_agreement.py (the first image of the first 40 lfw-devtrain people whose name starts with
B) and every image of `--pairs` pairs of pairsDevTrain (half same-person, half different-person, spread
evenly over the file). Each image goes through the whole pipeline as `face-agent eval` does
(agent/evaluation/lfw.py): raw JPEG, BlazeFace on the runtime under test (a second look at threshold 0.25
when nothing is found), the face nearest the centre, alignment, then the INT8 and the FP32 embedder, each
plain and with flip (the default space). Engines come from agent.evaluation.calibrate.make_engine, so every
model file's sha256 is checked against the manifest at load (EngineConfig.verify_checksums, on by default).

    python scripts/arm64/faces.py --models-dir models --out /tmp/x86.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np

# aarch64 AT_HWCAP / AT_HWCAP2 bits (linux arch/arm64/include/uapi/asm/hwcap.h) that matter for INT8 kernels.
_HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve", 23: "asimdfhm"}
_HWCAP2 = {1: "sve2", 9: "svei8mm", 12: "svebf16", 13: "i8mm", 14: "bf16"}


def cpu_facts() -> dict:
    """What the process sees: the auxiliary vector's HWCAPs (what qemu-user emulates, what runtimes query with
    getauxval) and the first lines of /proc/cpuinfo (under qemu-user 7.2 that is the *host's* file)."""
    facts: dict = {"machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU", "")}
    try:
        raw = Path("/proc/self/auxv").read_bytes()
        aux = dict(struct.iter_unpack("QQ", raw[: len(raw) // 16 * 16]))
        if platform.machine() == "aarch64":
            hw, hw2 = aux.get(16, 0), aux.get(26, 0)
            facts["hwcap"] = [n for b, n in _HWCAP.items() if hw >> b & 1]
            facts["hwcap"] += [n for b, n in _HWCAP2.items() if hw2 >> b & 1]
    except OSError:
        pass
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = ("model name", "Features")
        facts["proc_cpuinfo"] = [ln for ln in lines if ln.split(":")[0].strip() in keep][:1]
    except OSError:
        pass
    return facts


def select(lfw: Path, n_faces: int, n_pairs: int):  # noqa: ANN201
    from agent.evaluation.lfw import load_dataset, read_pairs

    ds = load_dataset(lfw)
    test = [i for i, p in enumerate(ds.paths) if p.parent.name.startswith("B") and p.stem.endswith("_0001")]
    test = test[:n_faces]
    pairs, same = read_pairs(lfw / "pairsDevTrain.txt", ds)
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    half = n_pairs // 2
    pick = (
        np.concatenate(
            [
                pos[np.linspace(0, len(pos) - 1, half).round().astype(int)],
                neg[np.linspace(0, len(neg) - 1, n_pairs - half).round().astype(int)],
            ]
        )
        if n_pairs
        else np.zeros(0, int)
    )
    sel_pairs, sel_same = pairs[pick].reshape(-1, 2), same[pick]
    rows = sorted(set(test) | set(sel_pairs.ravel().tolist()))
    where = {r: k for k, r in enumerate(rows)}
    paths = [ds.paths[r] for r in rows]
    return (
        paths,
        np.array([where[r] for r in test], int),
        np.array([[where[a], where[b]] for a, b in sel_pairs], int).reshape(-1, 2),
        sel_same,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_runtime(
    runtime: str, args: argparse.Namespace, paths: list[Path], test: np.ndarray, out: dict, meta: dict
) -> None:
    from agent.evaluation.calibrate import make_engine
    from agent.evaluation.lfw import central_face

    engines = {}
    for precision in args.precisions:
        t0 = time.perf_counter()
        engine = make_engine(args.models_dir, args.model, precision, runtime, args.detector, flip=True)
        if not engine.config.verify_checksums:
            raise SystemExit("verify_checksums is off: the check needs the engine's sha256 verification")
        files = engine.embedder.info.files
        meta["load"][f"{runtime}/{precision}"] = {
            "seconds": round(time.perf_counter() - t0, 2),  # sha256 of each file, compile, warm-up
            "model_id": engine.model_id,
            "embedder_file": files.model.name,
            "embedder_sha256": _sha256(files.model),
            "detector_file": str(engine.detector.info.files.model.relative_to(args.models_dir)),
            "detector_sha256": _sha256(engine.detector.info.files.model),
        }
        engines[precision] = engine
        print(
            f"{runtime}/{precision}: {engine.model_id} loaded, sha256 verified, "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    first = engines[args.precisions[0]]
    for e in engines.values():
        if e.embedder.align_spec != first.embedder.align_spec:
            raise SystemExit("the precisions align differently: one detection cannot serve both")

    n = len(paths)
    found = np.zeros(n, bool)
    boxes = np.full((n, 4), np.nan, np.float32)
    kps = np.full((n, 6, 2), np.nan, np.float32)
    scores = np.full(n, np.nan, np.float32)
    chips, rows = [], []
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        img = first.load(path.read_bytes())
        faces = first.detector.detect(img.pixels)
        if not faces:  # as agent/evaluation/lfw.embed_paths: a second, lower-threshold look
            faces = first.detector.detect(img.pixels, score_threshold=0.25)
        face = central_face(faces, img.width, img.height)
        if face is None:
            continue
        found[i] = True
        boxes[i] = [face.box.x1, face.box.y1, face.box.x2, face.box.y2]
        pts = np.asarray(face.keypoints, np.float32).reshape(-1, 2)[:6]
        kps[i, : len(pts)] = pts
        scores[i] = face.score
        chips.append(first.embedder.chips(img.pixels, [face])[0])
        rows.append(i)
    t_detect = time.perf_counter() - t0
    meta["seconds"][f"{runtime}/detect+align"] = round(t_detect, 2)
    print(f"{runtime}: {found.sum()} of {n} faces found in {t_detect:.1f} s", flush=True)
    out[f"{runtime}/found"], out[f"{runtime}/box"] = found, boxes
    out[f"{runtime}/kps"], out[f"{runtime}/score"] = kps, scores
    mirrors = [np.ascontiguousarray(c[:, ::-1]) for c in chips]
    for precision, engine in engines.items():
        # Both spaces from one pass: each chip and its mirror image embedded plain; the flip embedding is
        # their normalised sum, exactly what Embedder does with flip on (tests/test_flip.py checks it).
        # Checked here too on the test faces, against the engine's own flip path (`flip_check_max`).
        engine.embedder.flip = False
        t0 = time.perf_counter()
        dim = engine.embedder.dim
        plain, flipped = (np.full((n, dim), np.nan, np.float32) for _ in range(2))
        for k in range(0, len(chips), 8):
            y = engine.embedder.embed_chips(chips[k : k + 8] + mirrors[k : k + 8])
            m = len(y) // 2
            plain[rows[k : k + 8]] = y[:m]
            s = y[:m] + y[m:]
            flipped[rows[k : k + 8]] = s / np.linalg.norm(s, axis=1, keepdims=True)
        out[f"{runtime}/{precision}/plain"], out[f"{runtime}/{precision}/flip"] = plain, flipped
        t_embed = time.perf_counter() - t0
        meta["seconds"][f"{runtime}/{precision} embed plain+mirror"] = round(t_embed, 2)
        engine.embedder.flip = True
        t0 = time.perf_counter()
        wanted = set(test.tolist())
        test_rows = [j for j, r in enumerate(rows) if r in wanted]
        own = engine.embedder.embed_chips([chips[j] for j in test_rows]) if test_rows else np.zeros((0, dim))
        dev = np.abs(own - flipped[[rows[j] for j in test_rows]]).max() if test_rows else 0.0
        meta["flip_check_max"][f"{runtime}/{precision}"] = float(dev)
        t_check = round(time.perf_counter() - t0, 2)
        meta["seconds"][f"{runtime}/{precision} engine flip on test faces"] = t_check
        print(
            f"{runtime}/{precision}: {len(chips)} faces and their mirrors embedded in {t_embed:.1f} s; "
            f"engine flip path on {len(test_rows)} test faces: max |difference| {dev:.2e}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("FACE_AGENT_DATA", "../shared/data")))
    p.add_argument("--models-dir", type=Path, required=True, help="folder with manifest.json")
    p.add_argument("--model", default="dlib-resnet-v1")
    p.add_argument("--detector", default="blazeface-full")
    p.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    p.add_argument("--precisions", nargs="+", default=["int8", "fp32"])
    p.add_argument("--faces", type=int, default=40, help="the engine tests' test faces (at most 40)")
    p.add_argument("--pairs", type=int, default=200, help="pairsDevTrain pairs (half same, half different)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.models_dir = args.models_dir.resolve()

    t_all = time.perf_counter()
    lfw = args.data / "lfw-devtrain"
    paths, test, pairs, same = select(lfw, args.faces, args.pairs)
    versions = {}
    for mod in ("numpy", "cv2", "onnxruntime", "openvino", "hnswlib", "agent"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "")
        except Exception as exc:  # noqa: BLE001 - reported, not fatal (hnswlib is not used here)
            versions[mod] = f"import failed: {exc}"
    meta = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_facts(),
        "versions": versions,
        "model": args.model,
        "images": len(paths),
        "load": {},
        "flip_check_max": {},
        "seconds": {"select": round(time.perf_counter() - t_all, 2)},
    }
    print(json.dumps({k: meta[k] for k in ("platform", "python", "cpu", "versions")}), flush=True)
    out: dict[str, np.ndarray] = {
        "paths": np.array([str(q.relative_to(lfw)) for q in paths]),
        "test": test,
        "pairs": pairs,
        "same": same,
    }
    for runtime in args.runtimes:
        run_runtime(runtime, args, paths, test, out, meta)
    meta["seconds"]["total"] = round(time.perf_counter() - t_all, 2)
    out["meta"] = np.array(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(paths)} images, {meta['seconds']['total']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
