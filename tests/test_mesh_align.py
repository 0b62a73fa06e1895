"""Chips aligned on face-mesh points (embedder.landmarks): the default for dlib-resnet-v1, an embedding
space of its own (`+mesh`, thresholds calibrated for it), made at every entry point (embed for the camera
loop, the API and enrolment; embed_thumbnails, which aligns a stored chip again, for re-embedding), and a
gallery of the detector-keypoint space is re-embedded into it at start.

Real engines (the shipped INT8 dlib ResNet, BlazeFace, the MediaPipe face mesh), real LFW photos, real SQLite
galleries. Tolerances: the smallest value measured over 60 random lfw-devtrain faces on a 2-core AMD EPYC
(2026-12-07), less a margin; both INT8 runtimes give the same embeddings on AVX2 and VNNI CPUs
(docs/models.md), so they do not move between machines."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig
from agent.errors import ModelError
from agent.evaluation.lfw import central_face
from agent.gallery import Gallery, GalleryConfig
from agent.gallery.enroll import EnrollConfig, Enroller, items_from_folder
from agent.gallery.variants import open_gallery
from agent.inference.engine import FaceEngine
from agent.inference.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent


def _jpeg(chip: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf)


def _calibration(key: str) -> dict:
    data = json.loads((ROOT / "models" / "manifest.json").read_text())
    return data["models"]["dlib-resnet-v1"]["variants"]["int8"]["thresholds"][key]


@pytest.fixture(scope="module")
def keypoints() -> FaceEngine:
    return FaceEngine(EngineConfig(embedder=EmbedderConfig(landmarks="detector")))


@pytest.fixture(scope="module")
def photos(data_dir) -> list[Path]:
    paths = sorted((data_dir / "lfw-devtrain/images").glob("*/*.jpg"))
    random.Random(5).shuffle(paths)
    return paths[:16]


def test_default_is_the_mesh_space_with_its_own_thresholds(agent_engine, keypoints) -> None:
    mesh = agent_engine
    assert EmbedderConfig().landmarks == "auto" and mesh.mesh is not None
    assert mesh.model_id == f"{keypoints.model_id}+mesh" and mesh.model_id.endswith("+flip+mesh")
    assert mesh.thresholds == _calibration("openvino+flip+mesh")["cosine_at_far"]
    assert mesh.far_curve == _calibration("openvino+flip+mesh")["far_curve"] != keypoints.far_curve
    assert mesh.person_curves == _calibration("openvino+flip+mesh")["person_curves"]
    assert keypoints.thresholds == _calibration("openvino+flip")["cosine_at_far"] != mesh.thresholds
    # Each knows how to run the other: a gallery of the other space is re-embedded, not refused as unknown.
    assert "embedder.landmarks detector" in mesh.space_hints[keypoints.model_id]
    assert "embedder.landmarks mesh" in keypoints.space_hints[mesh.model_id]
    assert mesh.space_accepts == {}  # no older agent computed this space


def test_auto_takes_mesh_only_where_it_is_calibrated(models_dir) -> None:
    manifest = Manifest(models_dir)
    assert manifest.has_space("dlib-resnet-v1", "int8", "onnxruntime", True, mesh=True)
    assert not manifest.has_space("dlib-resnet-v1", "int8", "openvino", False, mesh=True)
    plain = FaceEngine(EngineConfig(embedder=EmbedderConfig(flip=False)))
    assert plain.mesh is None and not plain.model_id.endswith("+mesh")
    ort = FaceEngine(EngineConfig(runtime=OnnxRuntimeConfig()))
    assert ort.model_id.endswith("+flip+mesh")
    assert ort.thresholds == _calibration("onnxruntime+flip+mesh")["cosine_at_far"]


def test_mesh_alignment_for_a_model_without_it_fails_at_start() -> None:
    cfg = EngineConfig(embedder=EmbedderConfig(model="facenet-casia", landmarks="mesh"))
    with pytest.raises(ModelError, match="no face-mesh alignment"):
        FaceEngine(cfg)
    # auto falls back to the model's own alignment
    assert not FaceEngine(EngineConfig(embedder=EmbedderConfig(model="facenet-casia"))).model_id.endswith(
        "+mesh"
    )


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """[[a, -b, tx], [b, a, ty]] minimising the squared distances, solved as a linear system (not the
    SVD form the engine uses)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows, float), np.asarray(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_chip_puts_the_mesh_points_on_the_template(agent_engine, keypoints, photos) -> None:
    """The chip is cut from the mesh points, not the detector's keypoints: the mesh's eye corners and nose
    land on the template in the mesh chip, and the two spaces' chips differ."""
    spec = agent_engine.embedder.align_spec
    template = np.asarray(spec["template"]) * spec["size"]
    residual, moved = [], []
    for path in photos:
        img = agent_engine.load(path.read_bytes())
        face = agent_engine.detect(img, 1)[0]
        points = agent_engine.mesh.landmarks(img.pixels, face).points[spec["points"], :2]
        m = _least_squares_similarity(points, template)
        chip = agent_engine.embedder.chips(img.pixels, [face])[0]
        want = cv2.warpAffine(img.pixels, m, (spec["size"], spec["size"]))
        residual.append(np.abs(chip.astype(int) - want.astype(int)).mean())
        moved.append(np.abs(chip.astype(int) - keypoints.embedder.chips(img.pixels, [face])[0]).mean())
    assert max(residual) < 0.5, residual  # measured 0: the same warp
    assert min(moved) > 2.0, moved  # measured 5.8-27 grey levels on these 16: another alignment


def test_thumbnails_are_aligned_again(agent_engine, keypoints, photos) -> None:
    """Re-embedding from stored chips: a mesh chip gives back (nearly) the live embedding, and a chip cut by
    the detector-keypoint space comes out close to what the mesh space computes from the photo."""
    own, cross = [], []
    for path in photos:
        live = agent_engine.analyze(path.read_bytes(), 1, keep_chips=True)[0]
        old = keypoints.analyze(path.read_bytes(), 1, keep_chips=True)[0]
        again = agent_engine.embed_thumbnails([_jpeg(live.chip), _jpeg(old.chip)])
        own.append(float(again[0] @ live.vector))
        cross.append(float(again[1] @ live.vector))
    # measured min 0.9947 (own) and 0.9912 (cross) over 60 faces; FAR 1e-3 is cosine 0.93
    assert min(own) > 0.985 and min(cross) > 0.98, (own, cross)


def test_in_plane_rotation_is_aligned_away(agent_engine, photos) -> None:
    cos = []
    for path in photos:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h))
        a, b = _central(agent_engine, img), _central(agent_engine, turned)
        if a is not None and b is not None:  # BlazeFace misses some faces turned by 20 degrees
            cos.append(float(a @ b))
    assert len(cos) >= 12, cos
    assert min(cos) > 0.985, cos  # measured min 0.9939 over 60 faces (the keypoint alignment: 0.9898)


def _central(engine: FaceEngine, bgr: np.ndarray) -> np.ndarray | None:
    face = central_face(engine.detect(bgr), bgr.shape[1], bgr.shape[0])
    return None if face is None else engine.embed(bgr, [face])[0].vector


def test_keypoint_gallery_is_reembedded_into_the_mesh_space(
    tmp_path: Path, agent_engine, keypoints, data_dir
):
    people = ("Bill_Clinton", "Colin_Powell", "George_W_Bush")
    root = tmp_path / "people"
    for person in people:
        (root / person).mkdir(parents=True)
        src = data_dir / f"lfw-devtrain/images/{person}/{person}_0001.jpg"
        os.symlink(src, root / person / src.name)
    cfg = GalleryConfig(path=tmp_path / "g", save_interval_s=0)
    gallery = Gallery(cfg)
    try:
        summary = Enroller(keypoints, gallery, EnrollConfig(group_id="door", create_group=True)).run(
            items_from_folder(root)
        )
        assert summary.enrolled == 3 and summary.model_id == keypoints.model_id
        assert gallery.wait_ready(30) and gallery.save() == 1
    finally:
        gallery.close()
    with open_gallery(cfg, agent_engine) as g:  # the first start after the upgrade
        assert g.wait_ready(30)
        assert {f.model_id for f in g.list_faces("door")} == {agent_engine.model_id}
        threshold = agent_engine.thresholds["1e-4"]
        for person in people:  # another photo of each person finds them, above FAR 1e-4
            probe = data_dir / f"lfw-devtrain/images/{person}/{person}_0002.jpg"
            vec = agent_engine.analyze(probe.read_bytes(), 1)[0].vector
            hit = g.search("door", agent_engine.model_id, vec[None], 1)[0][0]
            assert hit[0].outer_id == person and hit[1] >= threshold, (person, hit[1])
