"""Infrared evidence (agent/gates/ir.py, agent/capture/ir.py): real faces against screen replays in made
near-infrared frames, the pair's registration, recordings of the two cameras through the real capture worker,
and a door that denies without IR evidence.

No recorded infrared footage exists in ../shared/data and nothing here ran on a real IR camera. The IR frames
are made from real photos: a real face (or a print of it: paper shows the face in IR too) is the photo's grey
rendering, brightened as skin is under an IR illuminator; a phone or tablet replay is the same frame with the
screen's area dark (a screen emits no near infrared; a faint reflection of the illuminator and sensor noise
stay); a faceless bright patch (a lamp) is a blurred bright blob. docs/liveness.md, "Infrared evidence".
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import depth_support as ds
import numpy as np
import pytest
from test_pipeline import ENROL, FR

from agent.capture import CaptureWorker
from agent.capture.factory import open_source
from agent.capture.ir import register
from agent.config import CameraConfig
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap
from agent.gates.ir import IrGateConfig, ir_check
from agent.types import IrFrame

PHOTOS = [
    f"{FR}/obama-480p.jpg",
    f"{FR}/biden.jpg",
    f"{FR}/knn_examples/train/obama/obama.jpg",
    f"{FR}/knn_examples/train/biden/biden2.jpg",
    f"{FR}/knn_examples/train/kit_harington/john1.jpeg",
    f"{FR}/lin-manuel-miranda.png",
    f"{FR}/alex-lacamoire.png",
]
LFW = 30  # plus the first photo of this many lfw-devtrain people


def ir_of(bgr: np.ndarray) -> np.ndarray:
    """A real scene in near infrared, made: grey, skin brighter and smoother than in colour."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    grey = 255.0 * (grey / 255.0) ** 0.8
    return np.clip(cv2.GaussianBlur(grey, (3, 3), 0), 0, 255).astype(np.uint8)


def screen_of(
    ir: np.ndarray, box, rng: np.random.Generator, reflection: float = 25.0, at: float = 0.3
) -> np.ndarray:
    """The same frame with a phone screen showing the face: its area (1.5 face boxes) dark in IR, with sensor
    noise and a soft reflection of the illuminator across the glass."""
    out = ir.astype(np.float32)
    h, w = ir.shape
    cx, cy = box.center
    half = 0.75 * max(box.width, box.height)
    x0, x1 = max(0, int(cx - half)), min(w, int(cx + half))
    y0, y1 = max(0, int(cy - half * 1.3)), min(h, int(cy + half * 1.3))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    glare = reflection * np.exp(-(((xx - x0) / max(1, x1 - x0) - at) ** 2) / 0.02)
    out[y0:y1, x0:x1] = 8.0 + glare + rng.normal(0, 3.0, size=glare.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def lamp_of(ir: np.ndarray, box) -> np.ndarray:
    """A bright faceless blob where the face was (a lamp, a heater: bright in IR, no face)."""
    out = ir.copy()
    h, w = ir.shape
    cx, cy = box.center
    half = 0.8 * max(box.width, box.height)
    x0, x1 = max(0, int(cx - half)), min(w, int(cx + half))
    y0, y1 = max(0, int(cy - half)), min(h, int(cy + half))
    out[y0:y1, x0:x1] = 200
    out[y0:y1, x0:x1] = cv2.GaussianBlur(out[y0:y1, x0:x1], (0, 0), 9)
    return out


@pytest.fixture(scope="module")
def photos(agent_engine, data_dir: Path):
    """(colour image, its largest face) for the listed photos and LFW people."""
    from agent.evaluation.lfw import load_dataset

    paths = [data_dir / p for p in PHOTOS]
    ds = load_dataset(data_dir / "lfw-devtrain")
    seen: set[int] = set()
    for path, ident in zip(ds.paths, ds.identities, strict=True):
        if len(seen) >= LFW:
            break
        if int(ident) not in seen:
            seen.add(int(ident))
            paths.append(Path(path))
    out = []
    for p in paths:
        img = cv2.imread(str(p))
        faces = agent_engine.detect(img)
        if faces:
            out.append((p.name, img, faces[0]))
    assert len(out) >= len(PHOTOS) + LFW - 3
    return out


def test_real_faces_show_in_ir_and_screens_and_lamps_do_not(photos, agent_engine):
    cfg = IrGateConfig(source="unused")
    rng = np.random.default_rng(3)
    real, screen, glare, lamp = [], [], [], []
    for _, img, face in photos:
        ir = ir_of(img)
        real.append(ir_check(face, IrFrame(ir), cfg, agent_engine.detect))
        screen.append(ir_check(face, IrFrame(screen_of(ir, face.box, rng)), cfg, agent_engine.detect))
        # the illuminator's reflection right across the glass: bright, but no face in it
        bright = screen_of(ir, face.box, rng, reflection=200.0, at=0.5)
        glare.append(ir_check(face, IrFrame(bright), cfg, agent_engine.detect))
        lamp.append(ir_check(face, IrFrame(lamp_of(ir, face.box)), cfg, agent_engine.detect))
    failed = [(n, c.reasons, c.level) for (n, _, _), c in zip(photos, real, strict=True) if not c.passed]
    print(
        f"\nIR: real faces passed {sum(c.passed for c in real)} of {len(real)} "
        f"(levels {min(c.level for c in real):.0f}..{max(c.level for c in real):.0f}); screens passed "
        f"{sum(c.passed for c in screen)} (levels up to {max(c.level for c in screen):.0f}); screens with "
        f"glare passed {sum(c.passed for c in glare)} ({sum(c.reasons == ('ir_dark',) for c in glare)} "
        f"dark, levels up to {max(c.level for c in glare):.0f}); lamps passed "
        f"{sum(c.passed for c in lamp)}"
    )
    assert len(failed) <= 1, failed  # a made IR frame of a real face is a face in IR
    assert not any(c.passed for c in screen) and all(c.reasons == ("ir_dark",) for c in screen)
    assert all(c.reasons == ("ir_no_face",) for c in glare), [(c.reasons, c.level) for c in glare]
    assert not any(c.passed for c in lamp) and all(c.reasons == ("ir_no_face",) for c in lamp)
    assert all(c.sensor == "ir" and c.level is not None for c in real + screen + lamp)


def test_no_or_stale_ir_is_no_evidence(photos, agent_engine):
    cfg = IrGateConfig(source="unused")
    _, img, face = photos[0]
    assert ir_check(face, None, cfg, agent_engine.detect).reasons == ("ir_missing",)
    stale = IrFrame(ir_of(img), skew_s=0.5)
    assert ir_check(face, stale, cfg, agent_engine.detect).reasons == ("ir_stale",)
    empty = IrFrame(np.zeros((0, 0), np.uint8))
    assert ir_check(face, empty, cfg, agent_engine.detect).reasons == ("ir_missing",)


def test_the_pairs_registration_maps_colour_to_ir(photos, agent_engine):
    """An IR camera beside the colour one sees the scene shifted and scaled: with the calibrated map the
    check looks at the face; with none (identity) it looks beside it and fails closed."""
    _, img, face = max(photos[: len(PHOTOS)], key=lambda p: p[1].shape[0] * p[1].shape[1])
    h, w = img.shape[:2]
    reg = (0.85, 0.0, 0.25 * w, 0.0, 0.85, -0.05 * h)  # colour pixel -> IR pixel
    m = np.asarray(reg).reshape(2, 3)
    ir_camera = cv2.warpAffine(ir_of(img), m, (w, h))  # what the IR camera itself delivers
    good = IrFrame(register(ir_camera, reg, (w, h)))
    cfg = IrGateConfig(source="unused", registration=reg)
    assert ir_check(face, good, cfg, agent_engine.detect).passed
    unregistered = IrFrame(register(ir_camera, IrGateConfig(source="x").registration, (w, h)))
    assert not ir_check(face, unregistered, cfg, agent_engine.detect).passed
    with pytest.raises(ValueError, match="invertible"):
        IrGateConfig(source="x", registration=(1, 2, 0, 2, 4, 0))


def _write_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im)
    return folder


def test_recordings_of_both_cameras_stay_registered_through_the_worker(tmp_path, photos):
    """Image-folder recordings of a colour and an IR camera through open_source and the real capture worker,
    rotated and cropped: each frame's IR is registered to its pixels; an IR recording that ends early leaves
    the rest of the frames without IR (the gate's ir_missing), and a missing IR camera stops nothing."""
    colour = [p[1] for p in photos[:4]]
    size = (320, 240)
    colour = [cv2.resize(c, size) for c in colour]
    cdir = _write_folder(tmp_path / "colour", colour)
    idir = _write_folder(tmp_path / "ir", [ir_of(c) for c in colour[:3]])  # one frame short
    cam = CameraConfig(
        id="door",
        source=str(cdir),
        realtime=False,
        rotate=90,
        roi=(0.1, 0.1, 0.8, 0.8),
        ir={"source": str(idir)},
    )
    frames = _capture(cam)
    assert len(frames) == 4
    for frame in frames[:3]:
        assert frame.ir is not None and frame.ir.grey.shape == frame.pixels.shape[:2]
        expected = cv2.cvtColor(frame.pixels, cv2.COLOR_BGR2GRAY).astype(np.float32)
        expected = 255.0 * (expected / 255.0) ** 0.8
        assert np.corrcoef(expected.ravel(), frame.ir.grey.ravel().astype(np.float32))[0, 1] > 0.98
    assert frames[3].ir is None
    gone = cam.model_copy(update={"ir": IrGateConfig(source=str(tmp_path / "no-such-folder"))})
    frames = _capture(gone)
    assert len(frames) == 4 and all(f.ir is None for f in frames)


def _capture(cam: CameraConfig) -> list:
    wake = threading.Event()
    worker = CaptureWorker(cam, open_source(cam), wake=wake)
    worker.start()
    frames = []
    try:
        while True:
            frame = worker.slot.take(timeout=30)
            if frame is None:
                if worker.finished.is_set() and worker.slot.depth == 0:
                    break
                continue
            frames.append(frame)
    finally:
        worker.stop(5)
    return frames


@pytest.fixture(scope="module")
def door(agent_engine, agent_thresholds, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    gallery = Gallery(GalleryConfig(path=tmp_path_factory.mktemp("gallery-ir")))
    gallery.create_group(group_id="door")
    for person, files in ENROL.items():
        for rel in files:
            face = agent_engine.analyze((data_dir / rel).read_bytes(), max_faces=1)[0]
            gallery.add_face("door", person, face.vector, agent_engine.model_id)
    yield Matcher(gallery, agent_engine.model_id, ScoreMap(agent_thresholds), gallery.config)
    gallery.close()


def _visit(engine, matcher, tmp: Path, colour: np.ndarray, ir: np.ndarray | None, n: int = 10) -> list:
    """One visit in front of a colour + IR pair, recorded as two image folders, through the real pipeline."""
    cdir = _write_folder(tmp / "colour", [colour] * n)
    idir = _write_folder(tmp / "ir", [ir] * n) if ir is not None else tmp / "ir-camera-unplugged"
    cam = CameraConfig(id="door", source=str(cdir), realtime=False, cooldown_s=0, ir={"source": str(idir)})
    return ds.door_visit(engine, matcher, cam, open_source(cam))


def _kinds(lines, kind):
    return [line["payload"] for line in lines if line["topic"].endswith("/" + kind)]


def test_a_door_with_an_ir_camera_opens_for_a_face_and_not_for_a_screen(
    agent_engine, door, data_dir, tmp_path
):
    img = cv2.imread(str(data_dir / FR / "obama-480p.jpg"))
    face = agent_engine.detect(img)[0]
    live = _visit(agent_engine, door, tmp_path / "live", img, ir_of(img))
    granted = [a for a in _kinds(live, "access") if a["person_id"] == "obama"]
    assert granted and granted[-1]["granted"], _kinds(live, "access")
    event = [e for e in _kinds(live, "recognized") if e["person_id"] == "obama"][-1]
    assert event["ir"]["passed"] and event["ir"]["required"] and event["ir"]["level"] >= 40
    assert event["depth"] is None
    # The same face replayed on a phone: recognized as Obama, access denied with the IR reason.
    rng = np.random.default_rng(5)
    replay = _visit(agent_engine, door, tmp_path / "replay", img, screen_of(ir_of(img), face.box, rng))
    access = [a for a in _kinds(replay, "access") if a["person_id"] == "obama"]
    assert access and not any(a["granted"] for a in access)
    assert all("ir_dark" in a["reasons"] for a in access), access
    event = [e for e in _kinds(replay, "recognized") if e["person_id"] == "obama"][0]
    level = event["ir"]["level"]
    assert event["ir"] == {"passed": False, "required": True, "level": level, "reasons": ["ir_dark"]}
    # An IR camera that is not there: no evidence, no entry.
    blind = _visit(agent_engine, door, tmp_path / "blind", img, None)
    access = [a for a in _kinds(blind, "access") if a["person_id"] == "obama"]
    assert access and not any(a["granted"] for a in access)
    assert all("ir_missing" in a["reasons"] for a in access), access


def test_ir_config_is_checked_and_validate_config_says_what_it_stops(tmp_path, capsys):
    from agent.cli.main import main
    from agent.config import AgentConfig

    with pytest.raises(ValueError, match="depth or ir, not both"):
        CameraConfig(id="d", source="realsense", depth={}, ir={"source": "2"})
    with pytest.raises(ValueError, match="ir.require needs publish.access.enabled"):
        AgentConfig(cameras=[{"id": "d", "source": "0", "ir": {"source": "2"}}])
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "recognition: {liveness_level: NORMAL}\npublish: {access: {enabled: true}}\n"
        "cameras:\n  - {id: door, source: '0', ir: {source: /dev/video2}}\n"
    )
    assert main(["run", "--config", str(cfg), "--validate-config"]) == 0
    out = capsys.readouterr().out
    assert "infrared evidence tells screen replays" in out and "NOT prints" in out
    assert "access requires it: screen replays are refused" in out


def test_a_live_pair_takes_the_newest_ir_frame_and_its_age_is_the_skew(tmp_path, photos):
    """Both cameras live (image folders delivered in real time, as cameras do): the IR thread keeps the
    newest frame and each colour frame carries its age; a clock that makes every IR frame old is stale."""
    from agent.capture.ir import IrPairedSource
    from agent.capture.sources import ImageFolderSource, ir_camera_config

    colour = [cv2.resize(p[1], (320, 240)) for p in photos[:2]]
    cdir = _write_folder(tmp_path / "colour", colour)
    idir = _write_folder(tmp_path / "ir", [ir_of(c) for c in colour])
    cam = CameraConfig(
        id="door", source=str(cdir), folder_fps=20, frames_per_image=10, ir={"source": str(idir)}
    )
    ir_cfg = ir_camera_config(cam)

    def pair(clock=None) -> list:
        kw = {} if clock is None else {"clock": clock}
        colour_src, ir_src = ImageFolderSource(cam, realtime=True), ImageFolderSource(ir_cfg, realtime=True)
        src = IrPairedSource(colour_src, ir_src, cam.ir.registration, **kw)
        assert src.live
        src.open()
        try:
            return [raw for raw in iter(src.read, None)]
        finally:
            src.close()
            assert src._reader is None  # the IR thread ended with the close

    frames = pair()
    with_ir = [f for f in frames if f.ir is not None]
    assert len(frames) == 20 and len(with_ir) >= 15  # the first frame may come before the first IR one
    assert all(0 <= f.ir.skew_s < 0.5 for f in with_ir)
    ticks = iter(range(0, 10**6, 2))  # every call is 2 s later: each IR frame is at least 2 s old when used
    stale = pair(lambda: float(next(ticks)))
    checked = [f for f in stale if f.ir is not None]
    assert checked and all(f.ir.skew_s >= 2.0 for f in checked)
    face = photos[0][2]  # the skew check comes before any pixel is looked at
    assert ir_check(face, checked[0].ir, IrGateConfig(source="x"), lambda img: []).reasons == ("ir_stale",)


def test_mixed_pairs_and_odd_ir_frames(tmp_path):
    from agent.capture.ir import to_grey

    with pytest.raises(ValueError, match="a camera and a recording cannot be paired"):
        CameraConfig(id="d", source="0", ir={"source": str(tmp_path)}, realtime=False)
    with pytest.raises(ValueError, match="a camera and a recording cannot be paired"):
        CameraConfig(id="d", source=str(tmp_path), realtime=False, ir={"source": "/dev/video2"})
    with pytest.raises(ValueError, match="device, a video file or an image folder"):
        CameraConfig(id="d", source="0", ir={"source": "rtsp://cam/ir"})
    assert CameraConfig(id="d", source="0", ir={"source": "/dev/video2"}).ir.source == "/dev/video2"
    one = np.full((4, 5, 1), 7, np.uint8)
    assert to_grey(one).shape == (4, 5) and to_grey(one)[0, 0] == 7
    deep = np.full((4, 5), 65535, np.uint16)  # a Y16 node
    assert to_grey(deep).dtype == np.uint8 and to_grey(deep)[0, 0] == 255
