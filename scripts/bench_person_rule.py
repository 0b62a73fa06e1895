#!/usr/bin/env python3
"""What the camera loop's mean rule costs per search against the max rule, in one run (issue 12).

A real SQLite gallery of synthetic identities (each `--faces` noisy samples of a random centre, 128-D, the
default space's id and manifest curves), searched with Matcher.search (the best face: the max rule) and
Matcher.search_mean (the 8 nearest persons re-scored by the mean of their faces: one SQLite read of their
embeddings per search). Prints the median and p99 per search of both and their ratio.

    python scripts/bench_person_rule.py [--persons 500 5000] [--faces 3] [--queries 2000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import EngineConfig  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, Matcher, NewFace, ScoreMap  # noqa: E402
from agent.gallery.thresholds import engine_thresholds, person_rule  # noqa: E402
from agent.inference.manifest import Manifest  # noqa: E402


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


class _Space:
    """The default embedding space's manifest facts (no model is loaded: searches need vectors only)."""

    def __init__(self) -> None:
        cfg = EngineConfig()
        emb = cfg.embedder
        info = Manifest().info(emb.model, emb.precision, cfg.runtime.kind, verify=False, flip=emb.flip)
        self.model_id, self.thresholds = info.model_id, info.thresholds
        self.far_curve, self.person_curves = info.far_curve, info.person_curves


def _timed(fn, queries) -> np.ndarray:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return np.asarray(out) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persons", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--faces", type=int, default=3, help="faces per person")
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    space = _Space()
    curves = person_rule(space, "mean", engine_thresholds(space))
    rng = np.random.default_rng(0)
    print(f"{_cpu()}; {args.faces} faces per person, {args.queries} searches per rule, 128-D")
    for persons in args.persons:
        with tempfile.TemporaryDirectory() as tmp:
            gallery = Gallery(GalleryConfig(path=Path(tmp) / "g", save_interval_s=0))
            try:
                gallery.create_group("door")
                centres = rng.normal(size=(persons, 128)).astype(np.float32)
                batch = []
                for p, c in enumerate(centres):
                    for _ in range(args.faces):
                        v = c + 0.5 * rng.normal(size=128).astype(np.float32)
                        batch.append(NewFace(f"p{p}", v / np.linalg.norm(v), space.model_id))
                for i in range(0, len(batch), 1000):
                    gallery.add_faces("door", batch[i : i + 1000])
                matcher = Matcher(gallery, space.model_id, ScoreMap(space.thresholds), gallery.config)
                picks = rng.integers(0, persons, args.queries)
                queries = centres[picks] + 0.5 * rng.normal(size=(args.queries, 128)).astype(np.float32)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                for q in queries[:50]:  # warm up both paths
                    matcher.search("door", q)
                    matcher.search_mean("door", q, curves)
                t_max = _timed(lambda q, m=matcher: m.search("door", q, top_k=1), queries)
                t_mean = _timed(lambda q, m=matcher: m.search_mean("door", q, curves), queries)
            finally:
                gallery.close()
        print(
            f"{persons:6d} persons ({persons * args.faces} faces): max rule median {np.median(t_max):.3f} ms "
            f"p99 {np.percentile(t_max, 99):.3f} ms; mean rule median {np.median(t_mean):.3f} ms "
            f"p99 {np.percentile(t_mean, 99):.3f} ms; "
            f"ratio of medians {np.median(t_mean) / np.median(t_max):.2f}"
        )


if __name__ == "__main__":
    main()
