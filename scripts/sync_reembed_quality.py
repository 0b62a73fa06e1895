"""Cross-model re-embedding quality (docs/sync.md): FaceNet chips (a hub's thumbnails) re-aligned and
embedded with dlib (an edge, FaceEngine.embed_foreign_chips), against dlib on the original photo; then
genuine and impostor pairs of a gallery built from the re-embedded chips.

    python scripts/sync_reembed_quality.py [LFW_IMAGES_DIR] [PERSONS]     # 150 lfw-devtrain persons, ~10 s
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import EngineConfig  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/data/lfw-devtrain/images"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    people = sorted(p for p in root.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)
    random.Random(3).shuffle(people)
    hub = FaceEngine(EngineConfig(embedder={"model": "facenet-casia", "precision": "fp32", "flip": False}))
    edge = FaceEngine(EngineConfig())
    same, direct, reembedded, probes, lost = [], [], [], [], 0
    t0 = time.time()
    for person in people[:count]:
        a, b = sorted(person.glob("*.jpg"))[:2]
        chip = hub.analyze(a.read_bytes(), max_faces=1, keep_chips=True)
        da, db = edge.analyze(a.read_bytes(), max_faces=1), edge.analyze(b.read_bytes(), max_faces=1)
        if not chip or not da or not db:
            continue
        jpeg = cv2.imencode(".jpg", chip[0].chip, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        v = edge.embed_foreign_chips([jpeg])[0]
        if v is None:
            lost += 1
            continue
        same.append(float(v @ da[0].vector))
        direct.append(da[0].vector)
        reembedded.append(v)
        probes.append(db[0].vector)
    probe = np.stack(probes)
    n = len(probe)
    by_direct, by_reembedded = probe @ np.stack(direct).T, probe @ np.stack(reembedded).T
    off = ~np.eye(n, dtype=bool)
    thr = edge.thresholds["1e-4"]
    ranks = np.arange(n)
    print(f"{edge.model_id} re-embedding {hub.model_id} chips: {n} persons, {time.time() - t0:.0f} s")
    print(f"no face found in {lost} re-aligned chips")
    print(
        f"cosine(re-embedded chip, {edge.model_id} on the photo): median {np.median(same):.4f}, "
        f"p5 {np.percentile(same, 5):.4f}, min {np.min(same):.4f}"
    )
    for name, sims in (("direct", by_direct), ("re-embedded", by_reembedded)):
        print(
            f"{name:>12}: genuine >= FAR 1e-4 threshold {thr}: {np.mean(np.diag(sims) >= thr):.3f}; "
            f"impostors >= it: {np.mean(sims[off] >= thr):.5f} of {off.sum()}; "
            f"rank-1 among {n}: {np.mean(sims.argmax(1) == ranks):.3f}"
        )


if __name__ == "__main__":
    main()
