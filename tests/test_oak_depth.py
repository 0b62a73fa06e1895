"""Depth evidence from a Luxonis OAK (agent/capture/oak.py) through the depthai SDK's own host-side objects:
real faces (the face mesh's relative depth of real photos, rendered to registered depth in mm, as in
tests/test_depth_liveness.py) and a print, delivered as the OAK's Sync node delivers them
(tests/oak_support.py: real dai.MessageGroup / dai.ImgFrame / dai.MessageQueue / dai.CalibrationHandler
objects), through the real
CaptureWorker, the depth gate and a door. The device side (stereo matching and alignment on the OAK) does not
run here: no OAK was available, and no recorded OAK footage exists (docs/liveness.md, "Depth evidence")."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("depthai", reason="depthai is not installed (pip install depthai)")

import depth_support as ds  # noqa: E402
import oak_support  # noqa: E402
from test_pipeline import ENROL, FR  # noqa: E402

from agent.capture import CaptureWorker  # noqa: E402
from agent.capture.factory import open_source  # noqa: E402
from agent.capture.oak import OakSource  # noqa: E402
from agent.cli.doctor import check_liveness  # noqa: E402
from agent.config import CameraConfig  # noqa: E402
from agent.errors import DeviceError, TransientError  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap  # noqa: E402
from agent.gates.depth import depth_check  # noqa: E402


@pytest.fixture(scope="module")
def obama(agent_engine, data_dir):
    """A real photo, its face, and depth (mm) rendered from its face mesh at 600 mm, with its focal length."""
    img = cv2.imread(str(data_dir / FR / "obama-480p.jpg"))
    face = agent_engine.detect(img)[0]
    points = agent_engine.mesh.landmarks(img, face).points
    depth, fx = ds.real_face_depth(points, face, img.shape[:2], 600.0)
    return img, face, depth, fx


def _read_all(cam: CameraConfig, feed, fx: float, shape, n: int) -> list:
    """The n frames of a software feed, through the real CaptureWorker (its crop, its depth handling)."""
    h, w = shape[:2]
    worker = CaptureWorker(cam, OakSource(cam, messages=feed, calibration=oak_support.calibration(fx, w, h)))
    worker.start()
    try:
        return [worker.slot.take(timeout=20) for _ in range(n)]
    finally:
        worker.stop(5)


def test_the_sdk_objects_keep_depth_registered_through_the_crop(agent_engine, obama) -> None:
    img, _, depth, fx = obama
    rng = np.random.default_rng(7)
    cam = CameraConfig(id="oak", source="oak", roi=(0.1, 0.05, 0.85, 0.9), depth={})
    feed = oak_support.SoftwareOak([(img, ds.sensor(depth, rng)) for _ in range(3)], skew_ms=8.0)
    frames = _read_all(cam, feed, fx, img.shape, 3)
    assert len(frames) == 3 and all(f.depth is not None for f in frames)
    frame = frames[-1]
    assert frame.depth.depth_mm.shape == frame.pixels.shape[:2] and frame.offset != (0, 0)
    assert frame.depth.fx == pytest.approx(fx, rel=1e-5) and frame.depth.skew_s == pytest.approx(0.008)
    found = agent_engine.detect(frame.pixels)[0]
    check = depth_check(found, frame.depth, cam.depth)
    assert check.passed and check.relief_mm > 10, check
    # The same photo held up as a print 600 mm away: flat, through the same path.
    sheet = ds.sheet_depth(img.shape[:2], fx, obama[1].keypoint("nose_tip"), 600.0, tilt_x=30)
    feed = oak_support.SoftwareOak([(img, ds.sensor(sheet, rng))])
    (flat,) = _read_all(cam, feed, fx, img.shape, 1)
    check = depth_check(agent_engine.detect(flat.pixels)[0], flat.depth, cam.depth)
    assert not check.passed and "depth_flat" in check.reasons, check


def test_missing_and_late_depth_are_no_evidence(agent_engine, obama) -> None:
    img, _, depth, fx = obama
    cam = CameraConfig(id="oak", source="oak", depth={})
    (bare,) = _read_all(cam, oak_support.SoftwareOak([(img, None)]), fx, img.shape, 1)
    assert bare.depth is None  # a colour frame the Sync node sent alone: no depth, no guess
    late = cam.depth.max_skew_s * 1000 + 20
    (stale,) = _read_all(cam, oak_support.SoftwareOak([(img, depth)], skew_ms=late), fx, img.shape, 1)
    check = depth_check(agent_engine.detect(stale.pixels)[0], stale.depth, cam.depth)
    assert not check.passed and "depth_stale" in check.reasons, check


def test_a_door_with_an_oak_opens_for_a_face_and_not_for_a_print(
    agent_engine, agent_thresholds, data_dir, obama, tmp_path
) -> None:
    gallery = Gallery(GalleryConfig(path=tmp_path / "g"))
    gallery.create_group(group_id="door")
    for person, files in ENROL.items():
        for rel in files:
            face = agent_engine.analyze((data_dir / rel).read_bytes(), max_faces=1)[0]
            gallery.add_face("door", person, face.vector, agent_engine.model_id)
    matcher = Matcher(gallery, agent_engine.model_id, ScoreMap(agent_thresholds), gallery.config)
    img, face, depth, fx = obama
    rng = np.random.default_rng(4)
    sheet = ds.sheet_depth(img.shape[:2], fx, face.keypoint("nose_tip"), 600.0, bend_mm=80)
    try:
        live = _visit(agent_engine, matcher, [(img, ds.sensor(depth, rng)) for _ in range(12)], fx)
        printed = _visit(agent_engine, matcher, [(img, ds.sensor(sheet, rng)) for _ in range(12)], fx)
    finally:
        gallery.close()
    granted = [a for a in live if a["person_id"] == "obama"]
    assert granted and granted[-1]["granted"], live
    refused = [a for a in printed if a["person_id"] == "obama"]
    assert refused and not any(a["granted"] for a in refused), refused
    assert all("depth_flat" in a["reasons"] for a in refused)


def _visit(engine, matcher, frames, fx) -> list[dict]:
    """One visit in front of an OAK through the real pipeline; the access decisions published."""
    h, w = frames[0][0].shape[:2]
    cam = CameraConfig(id="door", source="oak", depth={}, cooldown_s=0)
    feed = oak_support.SoftwareOak(frames)
    source = OakSource(cam, messages=feed, calibration=oak_support.calibration(fx, w, h))
    lines = ds.door_visit(engine, matcher, cam, source)
    return [line["payload"] for line in lines if line["topic"].endswith("/access")]


def test_config_names_the_oak_and_doctor_needs_its_sdk(monkeypatch) -> None:
    cam = CameraConfig(id="door", source="oak:1944301011A8C41200", depth={})
    assert cam.resolved_kind == "oak" and isinstance(open_source(cam), OakSource)
    with pytest.raises(ValueError, match="ir pairs an infrared camera"):
        CameraConfig(id="door", source="oak", ir={"source": "/dev/video2"})
    with pytest.raises(ValueError, match="'oak\\[:<device id>\\]'"):
        CameraConfig(id="door", source="0", depth={})
    assert check_liveness("door", "NONE", None, True, True, source_kind="oak").status == "OK"
    monkeypatch.setitem(sys.modules, "depthai", None)  # the SDK missing on the device
    missing = check_liveness("door", "NONE", None, True, True, source_kind="oak")
    assert missing.status == "FAIL" and missing.fix == "pip install depthai"
    with pytest.raises(DeviceError, match="pip install depthai"):
        OakSource(cam).open()


def test_no_oak_attached_is_a_transient_error_the_worker_retries() -> None:
    """The real SDK looking for a device that is not there (about 10 s: depthai's own search timeout)."""
    source = OakSource(CameraConfig(id="door", source="oak", depth={}))
    with pytest.raises(TransientError, match="cannot start the OAK") as exc:
        source.open()
    assert exc.value.code == "source_open"
    with pytest.raises(TransientError, match="not open"):
        source.read()
