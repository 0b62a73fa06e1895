#!/usr/bin/env python3
"""How an embedder file behaves on this CPU and on others: embeddings of fixed aligned chips, compared.

The chips are cut once (FP32 OpenVINO detector and alignment), so every comparison isolates the embedder file
and the runtime's kernels. Run `embed` natively and under an emulated CPU to see another CPU's INT8 kernels:

    python scripts/int8_agreement.py chips  --out /tmp/fa-int8/chips.npz
    python scripts/int8_agreement.py embed  --chips /tmp/fa-int8/chips.npz \
        --file models/dlib-resnet-v1/int8-qdq.onnx --runtime onnxruntime --out /tmp/fa-int8/ort-native.npy
    qemu-x86_64 -cpu EPYC-Rome .venv/bin/python scripts/int8_agreement.py embed ... --out ort-avx2.npy
    python scripts/int8_agreement.py report --chips /tmp/fa-int8/chips.npz --ref fp32.npy ort-native.npy ...

`qemu-x86_64 -cpu EPYC-Rome` (Debian's qemu-user) reports an AVX2 CPU without AVX-512 or VNNI, so onnxruntime
and OpenVINO pick the kernels that machine would run; the arithmetic is the same, only the speed is not.
`report` prints, per file, the cosine to the reference on the 40 test faces and on all faces, pair accuracy
and TAR at FAR 1e-3 / 1e-4 with thresholds taken from that file's own impostor scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.datadir import shared_data_dir  # noqa: E402


def cut_chips(args: argparse.Namespace) -> None:
    from agent.evaluation.calibrate import make_engine
    from agent.evaluation.lfw import central_face, load_dataset

    root = args.data / "lfw-devtrain"
    ds = load_dataset(root)
    engine = make_engine(None, args.model, "fp32", "openvino")
    chips = np.zeros((len(ds.paths), engine.embedder.size, engine.embedder.size, 3), np.uint8)
    found = np.zeros(len(ds.paths), bool)
    for i, path in enumerate(ds.paths):
        img = engine.load(path.read_bytes())
        faces = engine.detector.detect(img.pixels) or engine.detector.detect(img.pixels, score_threshold=0.25)
        face = central_face(faces, img.width, img.height)
        if face is not None:
            chips[i] = engine.embedder.chips(img.pixels, [face])[0]
            found[i] = True
    # The engine test's 40 faces: the first image of the first 40 people whose name starts with B.
    test = [i for i, p in enumerate(ds.paths) if p.parent.name.startswith("B") and p.stem.endswith("_0001")][
        :40
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, chips=chips, found=found, labels=ds.identities, test=np.array(test))
    print(f"{found.sum()} of {len(found)} faces cut to {args.out}")


def _session(path: Path, runtime: str):
    # Not agent.inference.runtime.open_session: importing agent.config pulls in agent.gallery and so hnswlib,
    # which pip compiles on the build machine with -march=native (AVX-512 here), an illegal instruction on the
    # emulated AVX2 CPU. The settings are the agent's own: explicit f32 precision, one thread.
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})[0]
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    req = compiled.create_infer_request()
    return lambda x: np.array(req.infer({0: x})[0])


def embed(args: argparse.Namespace) -> None:
    from agent.inference.manifest import Manifest

    data = np.load(args.chips)
    rows = data["test"] if args.test_only else np.flatnonzero(data["found"])
    if args.limit:
        rows = np.concatenate([data["test"], rows[:: max(1, len(rows) // args.limit)][: args.limit]])
    # The embedder's preprocessing from the manifest, without building an engine: its FP32 detector warm-up
    # takes minutes under an emulated CPU, where an INT8 embedder runs in a fraction of a second.
    facts = Manifest().info(args.model, "fp32", "onnxruntime", verify=False).input
    mean, scale = np.array(facts["mean"], np.float32), np.array(facts["scale"], np.float32)
    nchw, rgb = facts["layout"] == "NCHW", facts["colour"] == "RGB"

    def prep(chips: list[np.ndarray]) -> np.ndarray:
        x = np.stack(chips).astype(np.float32)
        x = (x[..., ::-1] if rgb else x) - mean
        x = x * scale
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x)

    run = _session(args.file, args.runtime)
    out = np.full((len(data["found"]), args.dim), np.nan, np.float32)
    t0 = time.perf_counter()
    chips = data["chips"]  # once: every data[...] of an npz reads the whole array again
    for i in rows:
        y = run(prep([chips[i]])).reshape(-1)
        out[i] = y / np.linalg.norm(y)
    np.save(args.out, out)
    print(f"{len(rows)} faces in {time.perf_counter() - t0:.1f} s -> {args.out}")


def report(args: argparse.Namespace) -> None:
    from agent.evaluation.lfw import load_dataset, read_pairs
    from agent.evaluation.metrics import (
        all_pair_scores,
        kfold_accuracy,
        pair_scores,
        tar_at,
        threshold_at_far,
    )

    data = np.load(args.chips)
    test = data["test"]
    ref = np.load(args.ref)
    ds = load_dataset(args.data / "lfw-devtrain")
    pairs, same = read_pairs(args.data / "lfw-devtrain/pairsDevTrain.txt", ds)
    print(
        f"{'file':<40} {'test min':>8} {'all min':>8} {'median':>8} {'acc':>7} {'TAR1e-3':>8} {'TAR1e-4':>8}"
    )
    for name in args.files:
        emb = np.load(name)
        cos_t = np.einsum("ij,ij->i", emb[test], ref[test])
        ok = ~np.isnan(emb[:, 0])
        full = ok.sum() > len(test)
        cells = [f"{Path(name).stem:<40}", f"{np.nanmin(cos_t):8.4f}"]
        if full:
            cos_a = np.einsum("ij,ij->i", emb[ok], ref[ok])
            acc = kfold_accuracy(pair_scores(emb, pairs), same)[0]
            genuine, impostor = all_pair_scores(emb, data["labels"])
            tars = [tar_at(genuine, threshold_at_far(impostor, far)) for far in (1e-3, 1e-4)]
            cells += [f"{cos_a.min():8.4f}", f"{np.median(cos_a):8.4f}", f"{acc * 100:6.2f}%"]
            cells += [f"{t:8.4f}" for t in tars]
        print(" ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["chips", "embed", "report"])
    p.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    p.add_argument("--model", default="dlib-resnet-v1")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chips", type=Path)
    p.add_argument("--file", type=Path)
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--test-only", action="store_true", help="embed only the 40 test faces")
    p.add_argument("--limit", type=int, default=0, help="the 40 test faces and this many others, spread")
    p.add_argument("--out", type=Path)
    p.add_argument("--ref", type=Path)
    p.add_argument("files", nargs="*")
    args = p.parse_intermixed_args()
    {"chips": cut_chips, "embed": embed, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
