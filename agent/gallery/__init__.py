"""Local face gallery: SQLite store of groups, persons and faces, hnswlib search, calibrated matching.

Owns the persons, their embeddings and enrolment; imports gates (enrolment quality), inference and ops;
never publish, recognition or api.

Typical wiring::

    gallery = open_gallery(GalleryConfig(path=state_dir / "gallery"), engine)  # agent/gallery/variants.py
    matcher = Matcher(gallery, engine.model_id, ScoreMap(manifest_thresholds), gallery.config)
    gallery.create_group(group_id="door")
    gallery.add_face("door", "alice", embedding, engine.model_id)
    matcher.search("door", probe, top_k=1, min_score=80.0)
"""

from agent.gallery.config import GalleryConfig
from agent.gallery.gallery import Gallery
from agent.gallery.index import HnswIndex
from agent.gallery.matcher import (
    FAR_SCORES,
    Candidate,
    Matcher,
    ScoreMap,
    assign_faces,
    max_weight_matching,
    min_cost_assignment,
)
from agent.gallery.store import FaceRecord, GalleryStore, GroupRecord, NewFace, PersonRecord

__all__ = [
    "FAR_SCORES",
    "Candidate",
    "FaceRecord",
    "Gallery",
    "GalleryConfig",
    "GalleryStore",
    "GroupRecord",
    "HnswIndex",
    "Matcher",
    "NewFace",
    "PersonRecord",
    "ScoreMap",
    "assign_faces",
    "max_weight_matching",
    "min_cost_assignment",
]
