"""Measure the liveness gate: APCER / BPCER per level on real spoof images, synthetic attacks made from real
photos and videos, and real videos of live people.

    nice -n 10 python scripts/liveness_eval.py [--data ../shared/data] [--photos 40] [--lfw 200]

Everything is deterministic (fixed seeds, sorted file lists). Synthetic attacks:
- print, moving: a real photo on a white-bordered card, moved through a smooth sequence of 3D plane poses
  (yaw/pitch/roll, translation, distance) projected by a pinhole camera, i.e. a smooth sequence of
  homographies, with changing Lambertian shading and gain, camera blur, noise and JPEG;
- print, still: the same card held still (hand tremor of about a degree);
- replay: a real live-video track shown on a screen (sub-pixel RGB stripes, dark gaps, gamma, bezel,
  sometimes a glare blob) that is itself moved by a smooth homography sequence.
A decision counts per sequence like a door would: an attack gets in if ANY report along the sequence passes
the level; a live person is refused if NO report along the sequence passes.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import EmbedderConfig, EngineConfig  # noqa: E402
from agent.gates.blink import BlinkConfig  # noqa: E402
from agent.gates.liveness import (  # noqa: E402
    LEVELS,
    TrackLiveness,
    evaluate_liveness,
    passive_liveness,
)
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.mesh import FaceMesh, open_face_mesh  # noqa: E402
from agent.types import Face  # noqa: E402

CAM_W, CAM_H, FOCAL = 640, 480, 700.0
Frame = tuple[np.ndarray, float]  # BGR image, timestamp in seconds


# ---- synthetic attacks ----------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def plane_homography(tex_w: int, tex_h: int, width_m: float, pose: dict[str, float]) -> np.ndarray:
    """Texture pixels -> camera pixels for a flat card `width_m` wide at the given pose (degrees, metres)."""
    s = width_m / tex_w
    to_plane = np.array([[s, 0, -s * tex_w / 2], [0, s, -s * tex_h / 2], [0, 0, 1]])
    rot = _rotation(pose["yaw"], pose["pitch"], pose["roll"])
    t = np.array([pose["x"], pose["y"], pose["z"]])
    k = np.array([[FOCAL, 0, CAM_W / 2], [0, FOCAL, CAM_H / 2], [0, 0, 1]])
    return k @ np.c_[rot[:, 0], rot[:, 1], t] @ to_plane


def smooth_poses(
    rng: np.random.Generator, n: int, fps: float, amp: dict[str, float]
) -> list[dict[str, float]]:
    """A smooth hand-held trajectory: per axis, two sinusoids of random phase and 0.2-1 Hz frequency."""
    base = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "x": 0.0, "y": 0.0, "z": amp.get("z0", 0.45)}
    waves = {
        k: [(rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)) for _ in range(2)]
        for k in base
    }
    poses = []
    for i in range(n):
        t = i / fps
        pose = {}
        for k, b in base.items():
            a = amp.get(k, 0.0)
            pose[k] = b + a * sum(w * math.sin(2 * np.pi * f * t + ph) for f, ph, w in waves[k]) / 2
        poses.append(pose)
    return poses


def _background(rng: np.random.Generator, source: np.ndarray) -> np.ndarray:
    """A face-free wall: a real photo blurred beyond recognition, with a random tint."""
    bg = cv2.resize(source, (CAM_W, CAM_H))
    bg = cv2.GaussianBlur(bg, (0, 0), 25)
    return np.clip(bg * rng.uniform(0.6, 1.1, 3), 0, 255).astype(np.uint8)


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Optics and sensor: slight blur, noise, JPEG."""
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    img = np.clip(img.astype(np.float32) + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 92))])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)


def _compose(bg: np.ndarray, tex: np.ndarray, hmat: np.ndarray, gain: np.ndarray | float = 1.0) -> np.ndarray:
    warped = cv2.warpPerspective(tex, hmat, (CAM_W, CAM_H), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full(tex.shape[:2], 255, np.uint8), hmat, (CAM_W, CAM_H))
    out = np.where(mask[..., None] > 127, np.clip(warped * gain, 0, 255), bg)
    return out.astype(np.uint8)


def print_attack(
    photo: np.ndarray, seed: int, still: bool = False, n: int = 30, fps: float = 15.0
) -> list[Frame]:
    """A photo printed on a card with a white border, held in front of the camera (moved, or held still)."""
    rng = np.random.default_rng(seed)
    side = 480
    scale = side / max(photo.shape[:2])
    card = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    card = cv2.copyMakeBorder(card, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=(235, 235, 232))
    amp = (
        {"yaw": 1.5, "pitch": 1.0, "roll": 1.0, "x": 0.003, "y": 0.003, "z": 0.005}
        if still
        else {"yaw": 28, "pitch": 16, "roll": 8, "x": 0.04, "y": 0.03, "z": 0.06}
    )
    amp["z0"] = rng.uniform(0.33, 0.45)
    bg = _background(rng, photo)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.2), -1.0])
    light /= np.linalg.norm(light)
    frames = []
    for i, pose in enumerate(smooth_poses(rng, n, fps, amp)):
        normal = _rotation(pose["yaw"], pose["pitch"], pose["roll"])[:, 2] * -1
        shade = 0.55 + 0.6 * max(0.0, float(normal @ -light)) * (0.9 + 0.1 * math.sin(i / 4))
        hmat = plane_homography(card.shape[1], card.shape[0], 0.16, pose)
        frames.append((_camera(rng, _compose(bg, card, hmat, shade)), i / fps))
    return frames


def screen_texture(frame: np.ndarray, screen_w: int, gamma: float, pixel_grid: bool) -> np.ndarray:
    """A video frame as an LCD shows it, screen_w pixels wide. With `pixel_grid` each pixel is drawn as R, G,
    B stripes with a dark row gap (a screen coarse enough for the camera to resolve); else plain pixels."""
    h = int(round(frame.shape[0] * screen_w / frame.shape[1]))
    px = (cv2.resize(frame, (screen_w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255) ** gamma
    if pixel_grid:
        sub = np.zeros((h * 3, screen_w * 3, 3), np.float32)
        for c, ch in enumerate((2, 1, 0)):  # BGR image, stripes ordered R, G, B left to right
            sub[:, c::3, ch] = np.repeat(px[:, :, ch], 3, axis=0)
        sub[2::3] *= 0.35  # the dark gap between pixel rows
        px = sub * 2.6  # a lit sub-pixel is brighter than the pixel's average
    tex = (px * 255).clip(0, 255).astype(np.uint8)
    border = tex.shape[1] // 12
    return cv2.copyMakeBorder(tex, border, border, border, border, cv2.BORDER_CONSTANT, value=(20, 20, 22))


def _render_supersampled(bg: np.ndarray, tex: np.ndarray, hmat: np.ndarray, factor: int = 3) -> np.ndarray:
    """Warp at `factor` times the camera resolution, blur like a lens and average down like a sensor, so that
    a fine screen grid aliases into moire only as much as a real camera lets it."""
    up = np.diag([factor, factor, 1.0]) @ hmat
    size = (CAM_W * factor, CAM_H * factor)
    warped = cv2.warpPerspective(tex, up, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full(tex.shape[:2], 255, np.uint8), up, size)
    big = np.where(mask[..., None] > 127, warped, cv2.resize(bg, size))
    big = cv2.GaussianBlur(big, (0, 0), 0.5 * factor)
    return cv2.resize(big, (CAM_W, CAM_H), interpolation=cv2.INTER_AREA)


def replay_attack(
    video: list[Frame], seed: int, glare: bool, pixel_grid: bool, fps: float = 15.0
) -> list[Frame]:
    """`video` (live frames, cropped around one person) replayed on a hand-held screen."""
    rng = np.random.default_rng(seed)
    amp = {"yaw": 12, "pitch": 8, "roll": 4, "x": 0.02, "y": 0.02, "z": 0.03, "z0": rng.uniform(0.24, 0.32)}
    bg = _background(rng, video[0][0])
    gamma = rng.uniform(0.8, 1.2)
    gx, gy = rng.uniform(0.15, 0.85, 2)
    screen_w = 360 if pixel_grid else 1200
    frames = []
    for i, pose in enumerate(smooth_poses(rng, len(video), fps, amp)):
        tex = screen_texture(video[i][0], screen_w, gamma, pixel_grid)
        if glare:  # a lamp reflected in the glass: an additive white blob drifting with the hand
            yy, xx = np.mgrid[0 : tex.shape[0], 0 : tex.shape[1]].astype(np.float32)
            cx, cy = (gx + 0.05 * math.sin(i / 5)) * tex.shape[1], gy * tex.shape[0]
            blob = 230 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.06 * tex.shape[1]) ** 2))
            tex = np.clip(tex + blob[..., None], 0, 255).astype(np.uint8)
        hmat = plane_homography(tex.shape[1], tex.shape[0], 0.15, pose)
        frames.append((_camera(rng, _render_supersampled(bg, tex, hmat)), video[i][1]))
    return frames


# ---- real data ------------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


def spoof_images(data: Path) -> list[tuple[str, str, bytes]]:
    """(name, kind, bytes) of the real attack and bona fide images in spoof/."""
    out = []
    for folder in sorted((data / "spoof").iterdir()):
        if (folder / "MANIFEST.csv").is_file():
            for row in read_manifest(folder):
                out.append((f"{folder.name}/{row['file']}", row["kind"], (folder / row["file"]).read_bytes()))
    return out


def photo_files(data: Path, limit: int) -> list[Path]:
    """Single-person photos from faces/ (manifest kind 'photo'), sorted, first `limit`."""
    files = []
    for folder in sorted((data / "faces").iterdir()):
        if (folder / "MANIFEST.csv").is_file():
            files += [folder / r["file"] for r in read_manifest(folder) if r["kind"] == "photo"]
    return sorted(files)[:limit]


def video_frames(path: Path, stride: int = 1) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            if i % stride == 0:
                yield frame, i / fps
            i += 1
    finally:
        cap.release()


# The real videos of live people in ../shared/data (BPCER, wait times, the challenge's chance passes).
LIVE_VIDEOS = (
    "faces/face_recognition/examples/short_hamilton_clip.mp4",
    "faces/facenet_pytorch/examples/video.mp4",
)


def live_tracks(
    engine: FaceEngine, path: Path, min_len: int = 12
) -> list[list[tuple[np.ndarray, Face, float]]]:
    """Greedy IoU tracks of detected faces (>= 64 px) in a real video, each at least `min_len` frames."""
    tracks: list[list[tuple[np.ndarray, Face, float]]] = []
    open_: list[list[tuple[np.ndarray, Face, float]]] = []
    for frame, t in video_frames(path):
        faces = [f for f in engine.detect(frame) if f.box.width >= 64]
        still_open = []
        for tr in open_:
            best = max(faces, key=lambda f: f.box.iou(tr[-1][1].box), default=None)
            if best is not None and best.box.iou(tr[-1][1].box) > 0.3:
                tr.append((frame, best, t))
                faces.remove(best)
                still_open.append(tr)
            else:
                tracks.append(tr)
        open_ = still_open + [[(frame, f, t)] for f in faces]
    tracks += open_
    return [tr for tr in tracks if len(tr) >= min_len]


def windows(track: list, size: int) -> list[list]:
    """Non-overlapping windows of `size` frames (the tail is dropped): independent decisions."""
    return [track[i : i + size] for i in range(0, len(track) - size + 1, size)]


# ---- running the gate -----------------------------------------------------------------------------------


def largest_face(engine: FaceEngine, image: np.ndarray) -> Face | None:
    faces = engine.detect(image)
    return faces[0] if faces else None


def sequence_verdicts(
    engine: FaceEngine,
    frames: list[Frame],
    faces: list[Face] | None = None,
    times: list[float] | None = None,
    mesh: FaceMesh | None = None,
) -> tuple[dict[str, bool], dict[str, float]]:
    """Per level: did ANY report along the sequence pass? And the last report's measures. `faces`: the
    tracked face of each frame (live tracks); otherwise the largest detected face. With `mesh`, the blink
    cue runs as on the camera loop (mesh on the frames the tracker asks for)."""
    blink = BlinkConfig() if mesh is not None else None
    tracker = TrackLiveness(blink=blink)
    passed = dict.fromkeys(LEVELS[1:], False)
    last: dict[str, float] = {}
    for i, (image, t) in enumerate(frames):
        face = faces[i] if faces is not None else largest_face(engine, image)
        if face is None:
            continue
        t0 = time.perf_counter()
        openness = None
        if mesh is not None and blink is not None and tracker.wants_eyes(face, t):
            openness = mesh.eye_openness(image, face, blink.min_face_probability)
        report = tracker.update(image, face, t, openness)
        if times is not None:
            times.append(time.perf_counter() - t0)
        for level in passed:
            passed[level] |= evaluate_liveness(report, level).passed
        if report is not None:
            last = dict(report.measures, track_score=report.track_score or 0.0)
    return passed, last


def image_verdicts(engine: FaceEngine, image: np.ndarray) -> tuple[dict[str, bool], dict[str, float]] | None:
    face = largest_face(engine, image)
    if face is None:
        return None
    report = passive_liveness(image, face)
    passed = {lv: evaluate_liveness(report, lv, single_image=True).passed for lv in LEVELS[1:]}
    return passed, dict(report.measures, score=report.score, reasons=" ".join(report.reasons))


class Table:
    """Rows of (set, kind, n, refused-or-accepted fraction per level)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, int, dict[str, float], str]] = []

    def add_images(self, name: str, attack: bool, measures: list[tuple[dict, dict]], note: str = "") -> None:
        """Single images: the note counts which passive cues fired."""
        counts: dict[str, int] = {}
        for _, m in measures:
            for reason in str(m["reasons"]).split():
                counts[reason] = counts.get(reason, 0) + 1
        fired = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no cue fired"
        self.add(name, attack, [ok for ok, _ in measures], "; ".join(x for x in (note, fired) if x))

    def add(self, name: str, attack: bool, results: list[dict[str, bool]], note: str = "") -> None:
        n = len(results)
        # APCER: attacks accepted; BPCER: bona fide refused
        rate = {lv: sum(r[lv] == attack for r in results) / max(n, 1) for lv in LEVELS[1:]}
        self.rows.append((name, "APCER" if attack else "BPCER", n, rate, note))

    def print(self) -> None:
        print(f"\n### {self.title}\n")
        print("| set | metric | n | LOW | NORMAL | HIGH | note |")
        print("|---|---|---|---|---|---|---|")
        for name, metric, n, rate, note in self.rows:
            cells = " | ".join(f"{100 * rate[lv]:.1f} %" for lv in LEVELS[1:])
            print(f"| {name} | {metric} | {n} | {cells} | {note} |")


def _crop_around(frame: np.ndarray, face: Face, grow: float) -> tuple[int, int, int, int]:
    side = max(face.box.width, face.box.height) * (1 + 2 * grow)
    cx, cy = face.box.center
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return x0, y0, int(min(frame.shape[1], x0 + side)), int(min(frame.shape[0], y0 + side))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=40, help="faces/ photos used for print attacks and BPCER")
    ap.add_argument("--lfw", type=int, default=60, help="LFW photos used for print attacks and BPCER")
    ap.add_argument("--window", type=int, default=20, help="frames per live window")
    ap.add_argument("--dump", type=Path, help="write every measure to this CSV")
    ap.add_argument("--no-blink", action="store_true", help="leave the blink cue (face mesh) out")
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = FaceEngine(EngineConfig(embedder=EmbedderConfig(precision="fp32")))
    mesh = None if args.no_blink else open_face_mesh(engine.config)
    seq_verdicts = lambda *a, **k: sequence_verdicts(*a, mesh=mesh, **k)  # noqa: E731
    dump: list[dict[str, object]] = []
    times: list[float] = []  # seconds per TrackLiveness.update on the live windows (640x360 and 1080p)
    lfw = sorted((args.data / "lfw-devtrain").rglob("*.jpg"))
    lfw = [lfw[i] for i in np.random.default_rng(0).permutation(len(lfw))[: args.lfw]]
    photos = [p for p in photo_files(args.data, args.photos)] + lfw
    videos = [args.data / v for v in LIVE_VIDEOS]
    live = [w for v in videos for tr in live_tracks(engine, v) for w in windows(tr, args.window)]

    single = Table("Single images (passive cues only, `single_image=True`)")
    spoof = spoof_images(args.data)
    for attack in (True, False):
        rows = []
        for name, kind, data in spoof:
            if kind.startswith("spoof") == attack:
                res = image_verdicts(engine, engine.load(data).pixels)
                if res:
                    rows.append(res)
                    dump.append({"set": "spoof_image", "name": name, "kind": kind, **res[1], **res[0]})
        single.add_images("real spoof/ images", attack, rows, "shared/data/spoof")
    rows = []
    for p in photos:
        res = image_verdicts(engine, engine.load(p.read_bytes()).pixels)
        if res:
            rows.append(res)
            dump.append({"set": "photo", "name": p.name, **res[1], **res[0]})
    single.add_images("bona fide photos (faces/ + LFW)", False, rows)

    seq = Table("Tracks (camera loop: temporal + passive cues)")
    print_rows, still_rows, print_frames = [], [], []
    for i, p in enumerate(photos):
        img = engine.load(p.read_bytes()).pixels
        face = largest_face(engine, img)
        if face is None:
            continue
        x0, y0, x1, y1 = _crop_around(img, face, 0.9)  # a portrait print: the face fills about half the card
        img = img[y0:y1, x0:x1]
        frames = print_attack(img, seed=i)
        print_frames.append(frames[len(frames) // 2][0])
        ok, m = seq_verdicts(engine, frames)
        print_rows.append(ok)
        dump.append({"set": "print_moving", "name": p.name, **m, **ok})
        ok, m = seq_verdicts(engine, print_attack(img, seed=10_000 + i, still=True))
        still_rows.append(ok)
        dump.append({"set": "print_still", "name": p.name, **m, **ok})
    seq.add("synthetic print, moved (homographies + lighting)", True, print_rows, f"{len(photos)} photos")
    seq.add("synthetic print, held still", True, still_rows)

    live_rows: list[dict[str, bool]] = []
    replay_rows: dict[bool, list[dict[str, bool]]] = {True: [], False: []}
    replay_frames: dict[bool, list[np.ndarray]] = {True: [], False: []}
    no_report = {True: 0, False: 0}
    live_no_report = 0
    for j, win in enumerate(live):
        frames = [(f, t) for f, _, t in win]
        ok, m = seq_verdicts(engine, frames, [f for _, f, _ in win], times)
        live_rows.append(ok)
        live_no_report += not m
        dump.append({"set": "live", "name": f"window{j}", **m, **ok})
        x0, y0, x1, y1 = _crop_around(win[0][0], win[0][1], 0.7)
        shown = [(f[y0:y1, x0:x1], t) for f, t in frames]
        for grid in (True, False):
            rep = replay_attack(shown, seed=20_000 + j, glare=j % 2 == 1, pixel_grid=grid)
            replay_frames[grid].append(rep[len(rep) // 2][0])
            ok, m = seq_verdicts(engine, rep)
            replay_rows[grid].append(ok)
            no_report[grid] += not m
            dump.append({"set": f"replay_grid{int(grid)}", "name": f"window{j}", **m, **ok})
    for grid, name in ((True, "coarse screen (pixel grid visible)"), (False, "fine screen (no pixel grid)")):
        note = f"half with a glare blob; {no_report[grid]} gave no report (refused: fail closed)"
        seq.add(f"synthetic replay of live windows, {name}", True, replay_rows[grid], note)
    note = f"hamilton + pedestrians; {live_no_report} gave no report (refused: fail closed)"
    seq.add(f"live video windows ({args.window} frames)", False, live_rows, note)

    singles = (
        ("synthetic print", print_frames),
        ("synthetic replay, coarse screen", replay_frames[True]),
        ("synthetic replay, fine screen", replay_frames[False]),
    )
    for name, frames in singles:
        rows = [r for r in (image_verdicts(engine, f) for f in frames) if r]
        single.add_images(f"{name}, one frame", True, rows, f"face found in {len(rows)}/{len(frames)}")
    single.print()
    seq.print()
    if args.dump:
        keys = sorted({k for row in dump for k in row})
        with open(args.dump, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(dump)
    ms = 1000 * np.array(times)
    print(
        f"\nTrackLiveness.update: median {np.median(ms):.2f} ms, 90 % {np.percentile(ms, 90):.2f} ms / frame"
    )
    blinks = {str(r["set"]): 0 for r in dump}
    for row in dump:
        blinks[str(row["set"])] += float(row.get("blinks", 0) or 0) > 0
    print("sequences with a blink:", ", ".join(f"{k} {v}" for k, v in blinks.items() if "image" not in k))
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
