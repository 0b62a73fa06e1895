"""Depth evidence (agent/gates/depth.py) through librealsense's own software device: real faces (the face
mesh's relative depth of real photos, rendered to registered depth in mm) against prints and screens (planes
at any tilt, sheets bent about either axis, a phone held close), missing and stale depth, the capture worker
keeping depth registered through its crop, and a door that denies without depth evidence. No recorded depth
footage exists in ../shared/data and nothing here ran on a real depth camera (docs/liveness.md, "Depth
evidence")."""

from __future__ import annotations

import platform
from pathlib import Path

import cv2
import numpy as np
import pytest

if platform.machine() in ("x86_64", "AMD64"):
    import pyrealsense2  # noqa: F401 - PyPI has x86-64 wheels; scripts/test.sh installs it: never skipped here
else:
    pytest.importorskip("pyrealsense2", reason="PyPI has no pyrealsense2 wheel for this CPU")

import depth_support as ds  # noqa: E402
from realsense_support import SoftwareRealSense  # noqa: E402
from test_pipeline import ENROL, FR  # noqa: E402

from agent.capture import CaptureWorker  # noqa: E402
from agent.capture.realsense import RealSenseSource  # noqa: E402
from agent.config import CameraConfig  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap  # noqa: E402
from agent.gates.depth import DepthGateConfig, depth_check  # noqa: E402
from agent.inference.mesh import open_face_mesh  # noqa: E402

DISTANCES = (400.0, 700.0, 1200.0)
ATTACKS = (  # how a print or a screen is held: tilted, bent either way about either axis, both
    {},
    {"tilt_x": 40},
    {"tilt_y": -40},
    {"tilt_x": 60},
    {"bend_mm": 80},
    {"bend_mm": -80},
    {"bend_mm": 120, "bend_axis": "horizontal"},
    {"bend_mm": -60, "tilt_x": 30},
    {"bend_mm": 150, "tilt_y": 35},
    {"fold_deg": 30},  # folded along one crease through the nose: relief, but the crease stays level
    {"fold_deg": 45},
    {"fold_deg": 30, "fold_axis": "horizontal"},
    {"fold_deg": 35, "fold_axis": "diagonal", "tilt_x": 20},
)
# Not stopped (scripts/depth_eval.py reports them): a sheet folded into a point at the nose, a bump behind it.
OPEN_ATTACKS = ({"point_deg": 30}, {"bump_mm": 12})


@pytest.fixture(scope="module")
def faces(agent_engine, data_dir, synth):
    """(photo, face, mesh points) of 16 real single-person photos."""
    mesh = open_face_mesh(agent_engine.config)
    out = []
    for path in synth.photo_files(data_dir, 16):
        img = cv2.imread(str(path))
        found = agent_engine.detect(img)
        if found:
            out.append((img, found[0], mesh.landmarks(img, found[0]).points))
    assert len(out) >= 12
    return out


def test_real_faces_have_relief_and_prints_and_screens_do_not(faces):
    cfg = DepthGateConfig()
    rng = np.random.default_rng(1)
    real, attacks = {d: [] for d in DISTANCES}, []
    for img, face, points in faces:
        for dist in DISTANCES:
            depth, fx = ds.real_face_depth(points, face, img.shape[:2], dist)
            real[dist].append(depth_check(face, ds.frame(ds.sensor(depth, rng), fx), cfg))
            for held in ATTACKS:
                sheet = ds.sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), dist, **held)
                attacks.append((held, depth_check(face, ds.frame(ds.sensor(sheet, rng), fx), cfg)))
    for dist in (400.0, 700.0):
        assert all(c.passed for c in real[dist]), [(c.relief_mm, c.reasons) for c in real[dist]]
    far = real[1200.0]
    assert sum(c.passed for c in far) >= 0.9 * len(far), [(c.relief_mm, c.reasons) for c in far]
    # Flat, tilted and bent sheets have no relief; sheets folded along a crease through the nose have relief
    # but a straight line along the crease (scripts/depth_eval.py: 1 of 480 folded attempts passed).
    passed = [(held, c) for held, c in attacks if c.passed]
    assert len(passed) <= 0.01 * len(attacks), passed
    assert all("depth_flat" in c.reasons for _, c in attacks if not c.passed)
    unfolded = [c.relief_mm for held, c in attacks if "fold_deg" not in held]
    assert max(unfolded) < cfg.min_relief_mm  # the quadric explains them: no relief at all
    assert max(c.relief_mm for held, c in attacks if "fold_deg" in held) > cfg.min_relief_mm  # folds: relief
    reliefs = [c.relief_mm for d in DISTANCES for c in real[d]]
    assert np.median(reliefs) > 15
    # A phone held 30 cm from the camera showing a face as large in the image as a real one 60 cm away: its
    # eyes are 31 mm apart, and it is flat.
    img, face, _ = faces[0]
    fx = ds.focal_for(face, 600.0)
    phone = ds.sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), 300.0, size_mm=70)
    check = depth_check(face, ds.frame(ds.sensor(phone, rng), fx), cfg)
    assert not check.passed and {"depth_flat", "depth_scale"} <= set(check.reasons), check


def test_no_depth_is_no_evidence(faces):
    img, face, points = faces[0]
    cfg = DepthGateConfig()
    depth, fx = ds.real_face_depth(points, face, img.shape[:2], 600.0)
    assert depth_check(face, ds.frame(depth, fx), cfg).passed
    assert depth_check(face, None, cfg).reasons == ("depth_missing",)
    assert depth_check(face, ds.frame(depth, fx, skew_s=0.2), cfg).reasons == ("depth_stale",)
    holes = np.where(np.random.default_rng(2).random(depth.shape) < 0.7, 0.0, depth).astype(np.float32)
    assert depth_check(face, ds.frame(holes, fx), cfg).reasons == ("depth_missing",)
    assert depth_check(face, ds.frame(np.zeros_like(depth), fx), cfg).reasons == ("depth_missing",)
    too_far = depth + 4000.0
    assert depth_check(face, ds.frame(too_far, fx), cfg).reasons == ("depth_missing",)


def test_the_sdk_path_keeps_depth_registered_through_the_crop(faces):
    """Colour and depth pushed through rs.software_device, synchronised by rs.syncer and aligned by rs.align
    in RealSenseSource, then cropped by the real CaptureWorker: the face found in the cropped frame still
    sits on its relief."""
    img, face, points = faces[1]
    depth, fx = ds.real_face_depth(points, face, img.shape[:2], 600.0)
    rng = np.random.default_rng(3)
    cam = CameraConfig(id="rs", source="realsense", roi=(0.1, 0.05, 0.85, 0.9), depth={})
    feed = SoftwareRealSense([(img, ds.sensor(depth, rng)) for _ in range(3)], fx)
    worker = CaptureWorker(cam, RealSenseSource(cam, frames=feed))
    worker.start()
    try:
        frames = [worker.slot.take(timeout=20) for _ in range(3)]
    finally:
        worker.stop(5)
        feed.close()
    assert all(f is not None and f.depth is not None for f in frames)
    frame = frames[-1]
    assert frame.depth.depth_mm.shape == frame.pixels.shape[:2] and frame.offset != (0, 0)
    assert frame.depth.fx == pytest.approx(fx, rel=1e-6) and frame.depth.skew_s == 0.0
    from agent.config import EngineConfig
    from agent.inference.engine import FaceEngine

    found = FaceEngine(EngineConfig()).detect(frame.pixels)[0]
    check = depth_check(found, frame.depth, cam.depth)
    assert check.passed and check.relief_mm > 10, check


@pytest.fixture(scope="module")
def door(agent_engine, agent_thresholds, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    gallery = Gallery(GalleryConfig(path=tmp_path_factory.mktemp("gallery-depth")))
    gallery.create_group(group_id="door")
    for person, files in ENROL.items():
        for rel in files:
            face = agent_engine.analyze((data_dir / rel).read_bytes(), max_faces=1)[0]
            gallery.add_face("door", person, face.vector, agent_engine.model_id)
    yield Matcher(gallery, agent_engine.model_id, ScoreMap(agent_thresholds), gallery.config)
    gallery.close()


def _visit(engine, matcher, frames, fx) -> list[dict]:
    """One visit in front of a depth camera through the real pipeline; the published messages."""
    cam = CameraConfig(id="door", source="realsense", depth={}, cooldown_s=0)
    feed = SoftwareRealSense(frames, fx)
    try:
        return ds.door_visit(engine, matcher, cam, RealSenseSource(cam, frames=feed))
    finally:
        feed.close()


def _kinds(lines, kind):
    return [line["payload"] for line in lines if line["topic"].endswith("/" + kind)]


def test_a_door_with_a_depth_camera_opens_for_a_face_and_not_for_a_print(agent_engine, door, data_dir, faces):
    img = cv2.imread(str(data_dir / FR / "obama-480p.jpg"))
    face = agent_engine.detect(img)[0]
    points = open_face_mesh(agent_engine.config).landmarks(img, face).points
    depth, fx = ds.real_face_depth(points, face, img.shape[:2], 600.0)
    rng = np.random.default_rng(4)
    n = 12
    live = _visit(agent_engine, door, [(img, ds.sensor(depth, rng)) for _ in range(n)], fx)
    granted = [a for a in _kinds(live, "access") if a["person_id"] == "obama"]
    assert granted and granted[-1]["granted"], _kinds(live, "access")
    recognized = [e for e in _kinds(live, "recognized") if e["person_id"] == "obama"]
    assert recognized[-1]["depth"]["passed"] and recognized[-1]["depth"]["relief_mm"] > 10
    # The same photo on a tilted print: recognized as Obama, access denied with the depth reason.
    sheet = ds.sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), 600.0, tilt_x=25, bend_mm=150)
    printed = _visit(agent_engine, door, [(img, ds.sensor(sheet, rng)) for _ in range(n)], fx)
    access = [a for a in _kinds(printed, "access") if a["person_id"] == "obama"]
    assert access and not any(a["granted"] for a in access)
    assert all("depth_flat" in a["reasons"] for a in access), access
    event = [e for e in _kinds(printed, "recognized") if e["person_id"] == "obama"][0]
    assert event["depth"] == {
        "passed": False,
        "required": True,
        "relief_mm": event["depth"]["relief_mm"],
        "reasons": ["depth_flat"],
    }
    # A depth camera whose depth stream died: no evidence, no entry.
    blind = _visit(agent_engine, door, [(img, None) for _ in range(n)], fx)
    access = [a for a in _kinds(blind, "access") if a["person_id"] == "obama"]
    assert access and not any(a["granted"] for a in access)
    assert all("depth_missing" in a["reasons"] for a in access), access


def test_validate_config_and_doctor_say_what_each_camera_stops(tmp_path, monkeypatch, capsys):
    import sys

    from agent.cli.doctor import check_liveness
    from agent.cli.main import main

    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "recognition: {liveness_level: NORMAL}\npublish: {access: {enabled: true}}\n"
        "cameras:\n  - {id: door, source: realsense, depth: {}}\n  - {id: hall, source: '0'}\n"
        "  - {id: lobby, source: '1', liveness_level: NONE}\n"
    )
    assert main(["run", "--config", str(cfg), "--validate-config"]) == 0
    out = capsys.readouterr().out
    assert "camera door: liveness NORMAL: NORMAL stops prints" in out and "access requires it" in out
    assert "camera hall: liveness NORMAL" in out and "NOT screen replays" in out
    assert "a screen replay is the attack left open" in out
    assert "camera lobby: liveness NONE: no liveness check: photos and screens are accepted" in out
    assert check_liveness("door", "HIGH", None, True, True).status == "OK"
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)  # the SDK missing on the device
    missing = check_liveness("door", "HIGH", None, True, True)
    assert missing.status == "FAIL" and "pip install pyrealsense2" in missing.fix


def test_depth_counts_only_for_the_recognized_face():
    """A print is recognized and denied; a real face swapped in at the same place but never embedded (it fails
    the quality gate, so it joins the track by its box alone) must not lend the track its relief."""
    from agent.gallery.matcher import Candidate
    from agent.gates.depth import DepthCheck
    from agent.recognition.tracking import FaceTracker, Observation, TrackerSettings
    from agent.types import Box

    cand = Candidate("p1", "victim", "", "door", "f1", 0.99, 97.0)
    settings = TrackerSettings(min_score=80, cooldown_s=0, depth=True, depth_required=True)
    tracker = FaceTracker(settings, lambda v: cand)
    vec = np.zeros(128, np.float32)
    vec[0] = 1.0
    flat = DepthCheck(False, 0.5, 63.0, 600.0, ("depth_flat",))
    relief = DepthCheck(True, 20.0, 63.0, 600.0, ())
    box = Box(100, 100, 200, 200)

    def frame(t, usable, depth):
        obs = Observation(box, vec if usable else None, 0.9 if usable else 0.1, usable, depth=depth)
        return tracker.update([obs], t)

    events = [e for t in range(3) for e in frame(t * 0.1, True, flat)]
    assert (
        events
        and events[0].known
        and not events[0].depth.passed
        and events[0].depth.reasons == ("depth_flat",)
    )
    swapped = [e for t in range(3, 9) for e in frame(t * 0.1, False, relief)]
    assert swapped == []  # no follow-up: the relief belonged to an unembedded face
    live = [e for t in range(9, 12) for e in frame(t * 0.1, True, relief)]
    assert len(live) == 1 and live[0].liveness_update and live[0].depth.passed  # the recognized face itself
