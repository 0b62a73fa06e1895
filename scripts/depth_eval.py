#!/usr/bin/env python3
"""Depth evidence on made depth (agent/gates/depth.py): the margin between real faces and prints / screens.

Real faces: the face mesh's relative depth of real single-person photos from ../shared/data, rendered to a
registered depth image in mm (tests/depth_support.py) at 400, 700 and 1200 mm, with stereo-camera-like noise
(4 mm at 1 m, growing with the square of the distance), 3% holes and 1 mm steps. Attacks: the same photos'
faces on sheets held flat, tilted (40-60 degrees), bent to cylinders of 60-150 mm radius either way about
either axis, folded along one crease through the nose (30-45 degrees a side), and combinations; and two the
check does not stop (a sheet folded into a point at the nose, a 12 mm bump behind it). Prints the relief
(nose out of the fitted face surface) and the verdicts at the
default thresholds. No recorded depth footage was available; nothing here ran on a real depth camera.

    python scripts/depth_eval.py [--photos 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from depth_support import focal_for, frame, real_face_depth, sensor, sheet_depth  # noqa: E402
from liveness_eval import photo_files  # noqa: E402
from test_depth_liveness import ATTACKS, DISTANCES, OPEN_ATTACKS  # noqa: E402

from agent.config import EngineConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gates.depth import DepthGateConfig, depth_check  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.mesh import open_face_mesh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--noise-at-1m", type=float, default=4.0, help="sensor noise (mm, 1 sigma) at 1 m")
    args = ap.parse_args()
    engine = FaceEngine(EngineConfig())
    mesh = open_face_mesh(engine.config)
    cfg = DepthGateConfig()
    rng = np.random.default_rng(0)
    real: dict[float, list] = {d: [] for d in DISTANCES}
    attacks: dict[str, list] = {}
    photos = 0
    for path in photo_files(args.data, args.photos):
        img = cv2.imread(str(path))
        faces = engine.detect(img)
        if not faces:
            continue
        photos += 1
        face = faces[0]
        points = mesh.landmarks(img, face).points
        for dist in DISTANCES:
            depth, fx = real_face_depth(points, face, img.shape[:2], dist)
            noisy = sensor(depth, rng, noise_at_1m_mm=args.noise_at_1m)
            real[dist].append(depth_check(face, frame(noisy, fx), cfg))
            for held in (*ATTACKS, *OPEN_ATTACKS):
                name = ", ".join(f"{k} {v}" for k, v in held.items()) or "flat, facing the camera"
                sheet = sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), dist, **held)
                noisy = sensor(sheet, rng, noise_at_1m_mm=args.noise_at_1m)
                attacks.setdefault(name, []).append(depth_check(face, frame(noisy, fx), cfg))
        fx = focal_for(face, 600.0)
        phone = sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), 300.0, size_mm=70)
        attacks.setdefault("phone at 300 mm (face as large as a real one at 600 mm)", []).append(
            depth_check(face, frame(sensor(phone, rng, noise_at_1m_mm=args.noise_at_1m), fx), cfg)
        )
    print(
        f"{photos} photos; noise {args.noise_at_1m} mm at 1 m; "
        f"min_relief_mm {cfg.min_relief_mm}, eye_mm {cfg.eye_mm}"
    )
    print("| real face at | passed | relief min / 5th pct / median (mm) |")
    print("|---|---|---|")
    for dist, checks in real.items():
        r = np.array([c.relief_mm for c in checks if c.relief_mm is not None])
        ok = sum(c.passed for c in checks)
        spread = f"{r.min():.1f} / {np.percentile(r, 5):.1f} / {np.median(r):.1f}"
        print(f"| {dist:.0f} mm | {ok} of {len(checks)} | {spread} |")
    print("\n| attack (all distances) | passed | relief max / median (mm) | reasons |")
    print("|---|---|---|---|")
    for name, checks in attacks.items():
        r = np.array([c.relief_mm for c in checks if c.relief_mm is not None])
        reasons = sorted({x for c in checks for x in c.reasons})
        ok = sum(c.passed for c in checks)
        print(
            f"| {name} | {ok} of {len(checks)} | {r.max():.1f} / {np.median(r):.1f} | {', '.join(reasons)} |"
        )


if __name__ == "__main__":
    main()
