"""Review page: recent unknown faces clustered by similarity, and recent recognitions to correct.

Clustering is greedy and online over the observer's bounded ring (at most a few hundred faces): each face,
oldest first, joins the cluster whose mean embedding is most similar if that cosine reaches the model's own
pair threshold at FAR 1e-3 (the ScoreMap's score 70, from the model manifest), else starts a cluster. Faces
of one person across frames and passes score far above that threshold; two strangers reach it once in a
thousand pairs. Assigning a cluster enrols its best faces by quality through the enrolment gates; the
forms carry the face ids they were shown, so a cluster that grew meanwhile changes nothing unseen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from agent.console.enrol import describe, enrol_images
from agent.console.people import field, gallery_changed, move_faces
from agent.console.security import Session
from agent.console.web import Console, back
from agent.errors import AgentError, InputError
from agent.gallery.matcher import FAR_SCORES
from agent.recognition.observe import RecentFace

MAX_IDS = 500


@dataclass
class Cluster:
    faces: list[RecentFace] = dc_field(default_factory=list)
    total: np.ndarray | None = None
    near: tuple[str, float] | None = None  # an enrolled person it looks like (_closest)

    def mean(self) -> np.ndarray:
        assert self.total is not None
        return self.total / max(float(np.linalg.norm(self.total)), 1e-12)

    def add(self, face: RecentFace) -> None:
        self.faces.append(face)
        vec = np.asarray(face.vector, dtype=np.float32)
        self.total = vec.copy() if self.total is None else self.total + vec

    @property
    def best(self) -> list[RecentFace]:
        return best_first(self.faces)

    @property
    def level(self) -> str:
        return self.best[0].quality_level or "NONE"

    @property
    def last_seen(self) -> float:
        return max(f.at for f in self.faces)


LEVEL_RANK = {"HIGH": 3, "NORMAL": 2, "LOW": 1}


def best_first(faces: list[RecentFace]) -> list[RecentFace]:
    """By the quality level passed, then the quality score: the faces most likely to pass enrolment."""
    return sorted(faces, key=lambda f: (-LEVEL_RANK.get(f.quality_level or "", 0), -(f.quality or 0.0)))


def cluster_threshold(console: Console) -> float:
    return float(console.ctx.scores.cosine(FAR_SCORES["1e-3"]))


def cluster(faces: list[RecentFace], threshold: float) -> list[Cluster]:
    """Greedy clustering (module doc); newest cluster first."""
    clusters: list[Cluster] = []
    for face in sorted((f for f in faces if f.vector is not None), key=lambda f: f.at):
        vec = np.asarray(face.vector, dtype=np.float32)
        sims = [float(c.mean() @ vec) for c in clusters]
        best = int(np.argmax(sims)) if sims else -1
        if best >= 0 and sims[best] >= threshold:
            clusters[best].add(face)
        else:
            fresh = Cluster()
            fresh.add(face)
            clusters.append(fresh)
    return sorted(clusters, key=lambda c: -c.last_seen)


def _data(console: Console) -> dict[str, Any]:
    obs = console.deps.observer
    recent = obs.recent() if obs is not None else []
    threshold = cluster_threshold(console)
    unknown = cluster([f for f in recent if not f.known], threshold)
    default = console.deps.group_id
    for c in unknown if default else []:
        c.near = _closest(console, default, c)
    groups = [g.group_id for g in console.ctx.gallery.list_groups()]
    persons = {g: [p.outer_id for p in console.ctx.gallery.list_persons(g)] for g in groups}
    return {
        "clusters": unknown,
        "recognized": [f for f in recent if f.known][:50],
        "threshold": threshold,
        "now": time.time(),
        "groups": groups,
        "persons": persons,
        "default_group": default or (groups[0] if groups else ""),
    }


def _closest(console: Console, group_id: str, c: Cluster) -> tuple[str, float] | None:
    """The enrolled person the cluster's mean looks like at the same pair threshold (FAR 1e-3), if any:
    someone seen before they were enrolled, or one the camera did not recognise (a hint, not a match)."""
    try:
        found = console.ctx.matcher.search(group_id, c.mean(), top_k=1, min_score=FAR_SCORES["1e-3"])
    except AgentError:  # group gone, index loading: no hint
        return None
    return (found[0].outer_id, round(found[0].score, 1)) if found else None


async def page(request: Request, console: Console, session: Session) -> Response:
    available = console.deps.observer is not None
    data = await console.blocking(_data, console) if available else {}
    return console.render(request, "review.html", session, available=available, **data)


async def thumbnail(request: Request, console: Console, session: Session) -> Response:
    raw = request.path_params["face"]
    obs = console.deps.observer
    found = obs.get([int(raw)]) if obs is not None and raw.isdigit() and len(raw) < 19 else []
    if not found:
        return PlainTextResponse("no such recent face", status_code=404)
    return Response(found[0].jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_IDS or not all(p.isdigit() and len(p) < 19 for p in parts):
        raise InputError("faces must list recent face ids", code="bad_argument")
    return [int(p) for p in parts]


def _observer(console: Console):  # noqa: ANN202 (FrameObserver)
    if console.deps.observer is None:
        raise InputError("no cameras in this process: nothing to review", code="not_available")
    return console.deps.observer


async def assign(request: Request, console: Console, session: Session) -> Response:
    """Enrol the best faces of a cluster (or one recognition) as a person, new or existing."""
    form = await console.form(request)
    obs = _observer(console)
    faces = obs.get(_ids(field(form, "faces", max_len=MAX_IDS * 20)))
    if not faces:
        raise InputError("these faces are no longer kept: reload the page", code="face_not_found")
    group_id = field(form, "group_id")
    outer_id = field(form, "new_id", required=False) or field(form, "outer_id", required=False)
    if not outer_id:
        raise InputError("choose a person or type a new id", code="missing_argument")
    info = field(form, "user_info", required=False, max_len=65536) or None
    best = best_first(faces)[: console.deps.config.review_enroll_faces]
    crops = [(f"{f.camera_id} track {f.track_id}", f.jpeg) for f in best]
    level = console.deps.config.enroll_quality
    summary = await console.blocking(enrol_images, console.ctx, group_id, outer_id, info, crops, level, True)
    for kind, text in describe(summary):
        session.say(kind, text)
    if summary.enrolled or summary.duplicates:
        obs.discard(f.id for f in faces)
        await console.blocking(gallery_changed, console)
    return back(request, "/review")


async def dismiss(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    gone = _observer(console).discard(_ids(field(form, "faces", max_len=MAX_IDS * 20)))
    session.say("ok", f"dismissed {gone} face(s)")
    return back(request, "/review")


async def move(request: Request, console: Console, session: Session) -> Response:
    """A wrong name: move the enrolled face that matched to the right person (it was enrolled under the
    wrong one), or with `reenrol` enrol this capture under the right person instead."""
    form = await console.form(request)
    faces = _observer(console).get(_ids(field(form, "faces", max_len=20)))
    if len(faces) != 1 or faces[0].matched_face_id is None or faces[0].group_id is None:
        raise InputError("this recognition is no longer kept: reload the page", code="face_not_found")
    face = faces[0]
    to_id = field(form, "new_id", required=False) or field(form, "outer_id", required=False)
    if not to_id:
        raise InputError("choose a person or type a new id", code="missing_argument")
    if to_id == face.person_id:
        raise InputError(f"this face is already {to_id}", code="bad_argument")
    if field(form, "how", required=False) == "reenrol":
        crops = [(f"{face.camera_id} track {face.track_id}", face.jpeg)]
        level = console.deps.config.enroll_quality
        summary = await console.blocking(
            enrol_images, console.ctx, face.group_id, to_id, None, crops, level, True
        )
        for kind, text in describe(summary):
            session.say(kind, text)
    else:
        await console.blocking(move_faces, console, face.group_id, [face.matched_face_id], to_id, None)
        session.say("ok", f"moved the matched face from {face.person_id} to {to_id}")
    _observer(console).discard([face.id])
    await console.blocking(gallery_changed, console)
    return back(request, "/review")


ACTIONS = {"assign": assign, "dismiss": dismiss, "move": move}
