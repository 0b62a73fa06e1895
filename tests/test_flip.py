"""Flip test-time augmentation: each face is embedded together with its mirror image and the two are averaged.
It is an embedding space of its own (model id `+flip`, thresholds calibrated for it), made at every entry
point (the engine's embed for the camera loop, the API and enrolment; embed_thumbnails for re-embedding), and
a gallery made with the other setting is re-embedded from its thumbnails at start.

Real engines (the shipped INT8 dlib ResNet), real LFW and example photos, real SQLite galleries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig
from agent.gallery import Gallery, GalleryConfig
from agent.gallery.enroll import EnrollConfig, Enroller, items_from_folder
from agent.gallery.index import index_paths
from agent.gallery.variants import open_gallery
from agent.inference.engine import FaceEngine
from agent.inference.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = ("Bill_Clinton", "Colin_Powell", "George_W_Bush")


def _engines(runtime: str) -> dict[bool, FaceEngine]:
    rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
    return {
        # On detector keypoints: the mesh alignment (tests/test_mesh_align.py) is calibrated with flip only
        flip: FaceEngine(EngineConfig(runtime=rt, embedder=EmbedderConfig(flip=flip, landmarks="detector")))
        for flip in (False, True)
    }


@pytest.fixture(scope="module")
def ov() -> dict[bool, FaceEngine]:
    return _engines("openvino")


@pytest.fixture(scope="module")
def faces(ov, data_dir) -> list[tuple[str, Path, np.ndarray, bytes]]:
    """(person, image, aligned chip, JPEG thumbnail) of six real faces, two images of three people."""
    out = []
    for person in PEOPLE:
        for n in (1, 2):
            path = data_dir / f"lfw-devtrain/images/{person}/{person}_{n:04d}.jpg"
            emb = ov[False].analyze(path.read_bytes(), 1, keep_chips=True)[0]
            ok, buf = cv2.imencode(".jpg", emb.chip, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            out.append((person, path, emb.chip, bytes(buf)))
    return out


def _by_hand(plain: FaceEngine, chips: list[np.ndarray]) -> np.ndarray:
    """normalise(e(chip) + e(mirror)), with the engine that does not flip."""
    assert not plain.embedder.flip
    a = plain.embedder.embed_chips(chips)
    b = plain.embedder.embed_chips([np.ascontiguousarray(c[:, ::-1]) for c in chips])
    s = a + b
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def _calibration(key: str) -> dict:
    data = json.loads((ROOT / "models" / "manifest.json").read_text())
    return data["models"]["dlib-resnet-v1"]["variants"]["int8"]["thresholds"][key]


def _manifest_thresholds(key: str) -> dict[str, float]:
    return _calibration(key)["cosine_at_far"]


def test_flip_is_its_own_space_with_its_own_thresholds(ov) -> None:
    plain, flip = ov[False], ov[True]
    assert flip.model_id == f"{plain.model_id}+flip"
    assert plain.thresholds == _manifest_thresholds("openvino")
    assert flip.thresholds == _manifest_thresholds("openvino+flip")
    assert set(flip.thresholds) == set(plain.thresholds) and flip.thresholds != plain.thresholds
    # ... and its own far_curve, for open-set thresholds.
    assert plain.far_curve == _calibration("openvino")["far_curve"]
    assert flip.far_curve == _calibration("openvino+flip")["far_curve"] != plain.far_curve
    # Each knows how to run the other (a gallery of the other space is re-embedded, not refused as unknown).
    assert "embedder.flip false" in flip.space_hints[plain.model_id]
    assert "embedder.flip true" in plain.space_hints[flip.model_id]
    assert {plain.model_id, flip.model_id} <= set(Manifest().spaces("dlib-resnet-v1"))
    # Older agents never flipped: no old id is this space.
    assert flip.space_accepts == {}


def test_default_engine_runs_flip(agent_engine) -> None:
    """The shipped default (docs/models.md, "Flip test-time augmentation")."""
    assert EmbedderConfig().flip is True
    assert "+flip" in agent_engine.model_id and agent_engine.embedder.flip
    assert agent_engine.thresholds == _manifest_thresholds("openvino+flip+mesh")  # aligned on the face mesh


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_flip_embedding_is_the_normalised_sum_of_chip_and_mirror(runtime, faces, data_dir) -> None:
    pair = _engines(runtime)
    plain, flip = pair[False], pair[True]
    chips = [c for _p, _i, c, _j in faces] * 3  # 18 faces: more than one max_batch of 8
    want = _by_hand(plain, chips)
    got = flip.embedder.embed_chips(chips)
    assert got.shape == want.shape and float(np.abs(got - want).max()) < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # The augmentation changes the vector (a no-op flip would pass the comparison above only by accident).
    cos_plain = np.einsum("ij,ij->i", got, plain.embedder.embed_chips(chips))
    assert cos_plain.max() < 0.9999, cos_plain

    # The camera loop, the API and enrolment go through embed(): two people in one photo.
    bgr = cv2.imread(str(data_dir / "faces/face_recognition/examples/two_people.jpg"))
    found = flip.detect(bgr)
    assert len(found) == 2
    live = np.stack([e.vector for e in flip.embed(bgr, found)])
    assert float(np.abs(live - _by_hand(plain, plain.embedder.chips(bgr, found))).max()) < 1e-5
    assert {e.model_id for e in flip.embed(bgr, found)} == {flip.model_id}

    # Re-embedding a gallery: the stored thumbnails, decoded, flipped like live faces.
    thumbs = [j for _p, _i, _c, j in faces]
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in thumbs]
    assert float(np.abs(flip.embed_thumbnails(thumbs) - _by_hand(plain, decoded)).max()) < 1e-5


def _enrol_folder(tmp_path: Path, faces) -> Path:
    root = tmp_path / "people"
    for person, path, _c, _j in faces:
        (root / person).mkdir(parents=True, exist_ok=True)
        os.symlink(path, root / person / path.name)
    return root


def test_gallery_enrolled_without_flip_is_reembedded_with_flip_and_back(tmp_path: Path, ov, faces) -> None:
    plain, flip = ov[False], ov[True]
    cfg = GalleryConfig(path=tmp_path / "g", save_interval_s=0)
    gallery = Gallery(cfg)
    try:
        enroller = Enroller(plain, gallery, EnrollConfig(group_id="door", create_group=True))
        summary = enroller.run(items_from_folder(_enrol_folder(tmp_path, faces)))
        assert summary.enrolled == len(faces) and summary.model_id == plain.model_id
        assert gallery.wait_ready(30) and gallery.save() == 1
        ids = [f.face_id for f in gallery.list_faces("door")]
    finally:
        gallery.close()
    # Flip turned on (the first start after the upgrade), then off again: each start re-embeds.
    for old, engine in ((plain, flip), (flip, plain)):
        old_files = index_paths(cfg.path / "indexes", "door", old.model_id)
        assert all(p.exists() for p in old_files)  # the old space's index, as the last run saved it
        with open_gallery(cfg, engine) as g:
            assert g.wait_ready(30)
            stored = g.list_faces("door")
            assert [f.face_id for f in stored] == ids  # face ids (clients' face tokens) survive
            assert {f.model_id for f in stored} == {engine.model_id}
            thumbs = [g.get_thumbnail(f.face_id)[1] for f in stored]
            got = np.stack([g.get_embedding(f.face_id) for f in stored])
            assert float(np.abs(got - engine.embed_thumbnails(thumbs)).max()) < 1e-6
            # Searchable in the new space: a live probe of each face finds its person first.
            probes = engine.embedder.embed_chips([c for _p, _i, c, _j in faces])
            hits = g.search("door", engine.model_id, probes, 1)
            assert [h[0][0].outer_id for h in hits] == [p for p, _i, _c, _j in faces]
            assert g.save() == 1
        assert not any(p.exists() for p in old_files)  # the emptied space's index is gone
