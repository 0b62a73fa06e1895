"""Enrolment throughput: faces/s of `Enroller` from a folder per person into a fresh gallery, medians.

Usage (from the repository root; run with `nice -n 10` on a shared machine):

    nice -n 10 /work/venvs/rt/bin/python scripts/bench_enroll.py --people 100 --repeats 3

Builds DIR/<person>/ of links to the first image(s) of `--people` lfw-devtrain people (in $FACE_AGENT_DATA or
../shared/data), then for each setting (workers x batch size) enrols them `--repeats` times, each into a new
gallery (SQLite synchronous=FULL, one fsync per batch), and prints the median faces/s and images/s. Compare
rows of one run with each other, not with other runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import EmbedderConfig, EngineConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gallery import Gallery, GalleryConfig  # noqa: E402
from agent.gallery.enroll import EnrollConfig, Enroller, items_from_folder  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.runtime.cpu import cpu_model  # noqa: E402


def build_folder(data: Path, people: int, per_person: int, out: Path) -> int:
    lfw = data / "lfw-devtrain" / "images"
    count = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:people]:
        (out / person.name).mkdir(parents=True)
        for img in sorted(person.glob("*.jpg"))[:per_person]:
            os.symlink(img, out / person.name / img.name)
            count += 1
    return count


def main() -> int:
    default_data = shared_data_dir(ROOT)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--per-person", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    ap.add_argument("--quality", default="NORMAL")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    engine = FaceEngine(EngineConfig(embedder=EmbedderConfig(precision=args.precision)))
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, load average {os.getloadavg()}, "
        f"Python {platform.python_version()}; engine {engine.model_id} on {engine.config.runtime.kind}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        folder = Path(tmp) / "people"
        images = build_folder(args.data, args.people, args.per_person, folder)
        items = items_from_folder(folder)
        print(
            f"{images} images of {args.people} people; quality level {args.quality}; {args.repeats} repeats"
        )
        print(f"{'workers':>7} {'batch':>5} {'faces/s':>8} {'images/s':>9} {'enrolled':>8} {'rejected':>8}")
        for workers in args.workers:
            for batch in args.batch_sizes:
                runs = []
                for r in range(args.repeats):
                    cfg = EnrollConfig(
                        group_id="bench",
                        create_group=True,
                        quality_level=args.quality,
                        workers=workers,
                        batch_size=batch,
                    )
                    gallery_dir = Path(tmp) / f"g-{workers}-{batch}-{r}"
                    with Gallery(GalleryConfig(path=gallery_dir, save_interval_s=0)) as gallery:
                        runs.append(Enroller(engine, gallery, cfg).run(items))
                row = {
                    "workers": workers,
                    "batch_size": batch,
                    "faces_per_s": statistics.median(s.faces_per_s for s in runs),
                    "images_per_s": statistics.median(s.images_per_s for s in runs),
                    "enrolled": runs[0].enrolled,
                    "rejected": runs[0].rejected,
                }
                rows.append(row)
                print(
                    f"{workers:>7} {batch:>5} {row['faces_per_s']:>8.2f} {row['images_per_s']:>9.2f} "
                    f"{row['enrolled']:>8} {row['rejected']:>8}",
                    flush=True,
                )
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
