"""Embedding variants are distinct spaces: a gallery enrolled under another variant of the running model is
re-embedded from its thumbnails, accepted where the manifest measured it equal, or refused with the fix.

Real engine (the shipped default), real SQLite gallery files, real aligned chips of LFW faces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import ConfigError
from agent.gallery import GalleryConfig, GalleryStore, NewFace
from agent.gallery.index import index_paths
from agent.gallery.variants import open_gallery

LEGACY = "dlib-resnet-v1/int8"  # the id every INT8 face had before variants named their runtime file


@pytest.fixture(scope="module")
def chips(agent_engine, data_dir) -> list[tuple[str, np.ndarray, bytes]]:
    """(person, chip, JPEG thumbnail) of six real faces, two images of three people."""
    out = []
    for person in ("Bill_Clinton", "Colin_Powell", "George_W_Bush"):
        for n in (1, 2):
            path = data_dir / f"lfw-devtrain/images/{person}/{person}_{n:04d}.jpg"
            emb = agent_engine.analyze(path.read_bytes(), 1, keep_chips=True)[0]
            ok, buf = cv2.imencode(".jpg", emb.chip, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            out.append((person, emb.chip, bytes(buf)))
    return out


def _enrol(cfg: GalleryConfig, chips, model_id: str, thumbs: bool = True, group: str = "door") -> list[str]:
    """Faces written straight into the store under `model_id`, with vectors that are *not* this engine's
    (a random rotation), as another variant's would be."""
    rng = np.random.default_rng(7)
    store = GalleryStore(cfg)
    try:
        store.create_group(group_id=group)
        faces = []
        for person, _chip, jpeg in chips:
            v = rng.normal(size=128).astype(np.float32)
            faces.append(NewFace(person, v / np.linalg.norm(v), model_id, thumbnail=jpeg if thumbs else None))
        return [r.face_id for r in store.add_faces(group, faces)]
    finally:
        store.close()


def test_legacy_int8_gallery_is_reembedded_from_thumbnails(tmp_path: Path, agent_engine, chips) -> None:
    cfg = GalleryConfig(path=tmp_path / "g", save_interval_s=0)
    ids = _enrol(cfg, chips, LEGACY)
    # An index file of the old space, as a running agent would have saved it.
    with open_gallery(cfg, _Source(LEGACY, embed=_never)) as g:
        assert g.wait_ready(30) and g.save() == 1
    old_files = index_paths(cfg.path / "indexes", "door", LEGACY)
    assert all(p.exists() for p in old_files)

    with open_gallery(cfg, agent_engine) as g:
        assert g.wait_ready(30)
        faces = g.list_faces("door")
        assert [f.face_id for f in faces] == ids  # face ids (clients' face tokens) survive
        assert {f.model_id for f in faces} == {agent_engine.model_id}
        expect = agent_engine.embed_thumbnails([jpeg for _p, _c, jpeg in chips])
        got = np.stack([g.get_embedding(i) for i in ids])
        assert np.abs(got - expect).max() < 1e-6
        # Searchable in the new space: each face's own chip, embedded live, finds its person first.
        probes = agent_engine.embedder.embed_chips([c for _p, c, _j in chips])
        for (person, _c, _j), hits in zip(
            chips, g.search("door", agent_engine.model_id, probes, 1), strict=True
        ):
            assert hits[0][0].outer_id == person
    assert not any(p.exists() for p in old_files)

    # Idempotent: the next start finds nothing to do and embeds nothing.
    with open_gallery(cfg, _Source(agent_engine.model_id, embed=_never)) as g:
        assert {f.model_id for f in g.list_faces("door")} == {agent_engine.model_id}


def test_faces_without_thumbnails_refuse_the_start_with_the_fix(tmp_path: Path, agent_engine, chips) -> None:
    cfg = GalleryConfig(path=tmp_path / "g")
    _enrol(cfg, chips, "dlib-resnet-v1/int8-ov", thumbs=False)
    with pytest.raises(ConfigError) as err:
        open_gallery(cfg, _Source("dlib-resnet-v1/int8-qdq", embed=_never, hints=agent_engine.space_hints))
    msg = str(err.value)
    assert "6 face(s) of dlib-resnet-v1/int8-ov" in msg and "6 of them have no thumbnail" in msg
    assert "face-agent enroll" in msg and "face-agent gallery delete" in msg
    # Nothing was changed: the faces are still in their own space.
    store = GalleryStore(cfg)
    assert [(m, n) for _g, m, n, _t in store.space_counts()] == [("dlib-resnet-v1/int8-ov", 6)]
    store.close()


def test_refuse_policy_and_measured_equal_spaces(tmp_path: Path, chips) -> None:
    cfg = GalleryConfig(path=tmp_path / "g", on_variant_change="refuse")
    ids = _enrol(cfg, chips, "dlib-resnet-v1/int8-a")
    with pytest.raises(ConfigError, match="on_variant_change is 'refuse'"):
        open_gallery(cfg, _Source("dlib-resnet-v1/int8-b", embed=_never))
    # A space the manifest declares equal (measured) is taken over as it is, whatever the policy.
    accepts = {"dlib-resnet-v1/int8-a": "min cosine 0.999 on 9523 faces"}
    with open_gallery(cfg, _Source("dlib-resnet-v1/int8-b", embed=_never, accepts=accepts)) as g:
        assert [f.face_id for f in g.list_faces("door", "dlib-resnet-v1/int8-b")] == ids


def test_other_models_are_left_alone(tmp_path: Path, chips) -> None:
    cfg = GalleryConfig(path=tmp_path / "g")
    _enrol(cfg, chips, "facenet-casia/int8-qdq")
    with open_gallery(cfg, _Source("dlib-resnet-v1/int8-qdq", embed=_never)) as g:
        assert {f.model_id for f in g.list_faces("door")} == {"facenet-casia/int8-qdq"}


def test_manifest_names_the_runtime_file(agent_engine) -> None:
    """Every variant id names its file (stem and sha256 prefix); every space, old ones too, says how to run
    it; the pre-0.2 FP32 id is accepted as the same file, the pre-0.2 INT8 id is not."""
    from agent.inference.manifest import Manifest

    manifest = Manifest()
    for name in manifest.names("embedder"):
        spaces = manifest.spaces(name)
        for variant in manifest.variants(name):
            for runtime in ("openvino", "onnxruntime"):
                info = manifest.info(name, variant, runtime, verify=False)
                stem = Path(info.files.model.name).stem
                assert info.model_id.startswith(f"{name}/{stem}.") and info.model_id in spaces
                if variant == "fp32":
                    assert f"{name}/fp32" in info.space_accepts
                else:
                    assert f"{name}/int8" not in info.space_accepts
                # The same file with flip test-time augmentation: another space, known, never accepted as old.
                flipped = manifest.info(name, variant, runtime, verify=False, flip=True)
                assert flipped.model_id == f"{info.model_id}+flip" and flipped.model_id in spaces
                assert flipped.space_accepts == {} and flipped.thresholds != info.thresholds
        assert "no file of this agent" in spaces[f"{name}/int8"]
    assert agent_engine.model_id in agent_engine.space_hints


def _never(thumbnails: list[bytes]) -> np.ndarray:
    raise AssertionError("nothing should be re-embedded here")


@dataclass
class _Source:
    model_id: str
    embed: object = None
    accepts: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)

    @property
    def space_accepts(self) -> dict:
        return self.accepts

    @property
    def space_hints(self) -> dict:
        return self.hints

    def embed_thumbnails(self, thumbnails: list[bytes]) -> np.ndarray:
        return self.embed(thumbnails)
