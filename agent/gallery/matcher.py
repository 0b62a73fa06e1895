"""Turning index hits into answers: calibrated scores, top-k persons (1:N) and faces-to-persons (M:N).

Score calibration (fixed, so integrators can hard-code thresholds across models):

    cosine  <= 0            ->   0
    cosine at FAR 1e-3      ->  70
    cosine at FAR 1e-4      ->  80      (jumdata's default matchThreshold 80 therefore means FAR 1e-4)
    cosine at FAR 1e-5      ->  90
    cosine at FAR 1e-6      ->  95      (only if the model manifest gives a 1e-6 threshold)
    cosine  = 1             -> 100

and linear in between. Between the 1e-3 and 1e-5 anchors ten points are one decade of false-accept rate, so
a score behaves like -log10(FAR) there. The map is strictly increasing, hence invertible (`ScoreMap.cosine`).
The per-model cosine thresholds come from the model manifest and are passed in; this module reads no files.

M:N assignment: each face of one image is given at most one person and no person goes to two faces. The
weight of a (face, person) pair is its score above `min_score`; the assignment maximising the sum is found
exactly with the Hungarian algorithm (implemented here: no scipy). For `max_users > 1` further rounds hand
out the persons nobody got yet, so a person still appears under at most one face.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from agent.errors import ConfigError, InputError
from agent.gallery.config import GalleryConfig
from agent.gallery.store import FaceRecord, check_vector
from agent.gallery.thresholds import PersonCurves

# FAR -> score anchors, strictest last. The first three are required.
FAR_SCORES: dict[str, float] = {"1e-3": 70.0, "1e-4": 80.0, "1e-5": 90.0, "1e-6": 95.0}
REQUIRED_FARS = ("1e-3", "1e-4", "1e-5")
# Persons a mean-rule search re-scores: the nearest by their best face (a person whose mean is close to the
# probe has a face close to it too).
_MEAN_PERSONS = 8


class ScoreMap:
    """Monotone piecewise-linear map between cosine similarity and the 0..100 score, for one model."""

    def __init__(self, thresholds: Mapping[str, float]) -> None:
        missing = [far for far in REQUIRED_FARS if far not in thresholds]
        if missing:
            raise ConfigError(f"model thresholds lack FAR {missing}")
        self.fars = [far for far in FAR_SCORES if far in thresholds]
        cos = [0.0] + [float(thresholds[far]) for far in self.fars] + [1.0]
        if any(b <= a for a, b in zip(cos, cos[1:], strict=False)):
            raise ConfigError(f"cosine thresholds must rise strictly within (0, 1) as FAR falls: {cos[1:-1]}")
        self._cos = np.asarray(cos)
        self._score = np.asarray([0.0] + [FAR_SCORES[far] for far in self.fars] + [100.0])

    def score(self, cosine: float | np.ndarray) -> float | np.ndarray:
        out = np.interp(cosine, self._cos, self._score)  # clamps outside [0, 1]
        return float(out) if np.ndim(out) == 0 else out

    def cosine(self, score: float | np.ndarray) -> float | np.ndarray:
        """Inverse of `score` on (0, 100]; score 0 maps to cosine 0 (anything at or below it)."""
        out = np.interp(score, self._score, self._cos)
        return float(out) if np.ndim(out) == 0 else out

    def thresholds(self) -> dict[str, float]:
        """Scores at each FAR, in the shape of Face++'s `thresholds` field."""
        return {far: FAR_SCORES[far] for far in self.fars}


@dataclass(frozen=True)
class Candidate:
    """A person found for a query face, represented by their best-matching enrolled face."""

    person_id: str
    outer_id: str
    user_info: str
    group_id: str
    face_id: str
    cosine: float
    score: float


def best_per_person(hits: Sequence[tuple[FaceRecord, float]], scores: ScoreMap) -> list[Candidate]:
    """Collapse face hits to persons (best face each), best first."""
    best: dict[str, tuple[FaceRecord, float]] = {}
    for face, cos in hits:
        if face.person_id not in best or cos > best[face.person_id][1]:
            best[face.person_id] = (face, cos)
    ranked = sorted(best.values(), key=lambda fc: -fc[1])
    return [
        Candidate(f.person_id, f.outer_id, f.user_info, f.group_id, f.face_id, float(c), scores.score(c))
        for f, c in ranked
    ]


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """Hungarian algorithm (shortest augmenting paths with potentials), O(n^2 m) for n <= m.

    Returns for each row the column it gets; every row gets a distinct column and the total cost is
    minimal. Rows are augmented one at a time; the column loop is vectorised with numpy."""
    n, m = cost.shape
    if n > m:
        raise ValueError("min_cost_assignment needs rows <= columns")
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: 1-based row holding column j (0 = free)
    way = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0], j0 = row, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            reduced = np.concatenate(([np.inf], cost[i0 - 1] - u[i0] - v[1:]))
            free = ~used
            better = free & (reduced < minv)
            minv[better], way[better] = reduced[better], j0
            masked = np.where(free, minv, np.inf)
            j1 = int(np.argmin(masked))
            delta = masked[j1]
            used_cols = np.nonzero(used)[0]
            u[owner[used_cols]] += delta
            v[used_cols] -= delta
            minv[free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    result = np.full(n, -1, dtype=np.int64)
    for col in range(1, m + 1):
        if owner[col]:
            result[owner[col] - 1] = col - 1
    return result


def max_weight_matching(weights: np.ndarray, allowed: np.ndarray) -> list[int | None]:
    """Rows to columns, each used at most once, maximising the summed weight of allowed pairs (weights > 0).
    A row may stay unmatched: one zero-cost dummy column per row stands for "nobody"."""
    n, m = weights.shape
    cost = np.where(allowed, -weights, 1.0)  # a forbidden pair costs more than staying unmatched
    cost = np.hstack([cost, np.zeros((n, n))])
    cols = min_cost_assignment(cost)
    return [int(c) if c < m and allowed[r, c] else None for r, c in enumerate(cols)]


def assign_faces(
    per_face: Sequence[Sequence[Candidate]], max_users: int, min_score: float
) -> list[list[Candidate]]:
    """M:N: up to `max_users` persons per face, no person under two faces, best assignment first."""
    persons = sorted({c.person_id for cands in per_face for c in cands if c.score >= min_score})
    col = {pid: j for j, pid in enumerate(persons)}
    weights = np.zeros((len(per_face), len(persons)))
    allowed = np.zeros_like(weights, dtype=bool)
    chosen: dict[tuple[int, int], Candidate] = {}
    for i, cands in enumerate(per_face):
        for c in cands:
            if c.score >= min_score:
                j = col[c.person_id]
                weights[i, j] = c.score - min_score + 1e-6  # evidence above the threshold, always > 0
                allowed[i, j] = True
                chosen[(i, j)] = c
    out: list[list[Candidate]] = [[] for _ in per_face]
    for _ in range(max_users):
        if not allowed.any():
            break
        for i, j in enumerate(max_weight_matching(weights, allowed)):
            if j is not None:
                out[i].append(chosen[(i, j)])
                allowed[:, j] = False  # this person is taken for the whole image
    return out


class Matcher:
    """1:N and M:N search of one model's embeddings in a group, with calibrated scores."""

    def __init__(self, gallery, model_id: str, scores: ScoreMap, config: GalleryConfig) -> None:
        self._gallery, self.model_id, self.scores, self._cfg = gallery, model_id, scores, config
        self._persons: dict[str, tuple[tuple, int]] = {}  # group -> (index state it was counted at, persons)

    def faces(self, group_id: str) -> int:
        """Live faces of this model in the group's index (0 while not loaded): what one search compares."""
        index = self._gallery.index(group_id, self.model_id)
        return 0 if index is None else int(index.stats()["live"])

    def _check(self, top_k: int, min_score: float) -> None:
        if not 1 <= top_k <= self._cfg.max_top_k:
            raise InputError(f"top_k must be 1..{self._cfg.max_top_k}", code="invalid_top_k")
        if not 0.0 <= min_score <= 100.0:
            raise InputError("min_score must be 0..100", code="invalid_threshold")

    def _candidates(self, group_id: str, vectors: np.ndarray, top_k: int) -> list[list[Candidate]]:
        hits = self._gallery.search(group_id, self.model_id, vectors, top_k * self._cfg.candidate_factor)
        return [best_per_person(h, self.scores) for h in hits]

    def search(
        self, group_id: str, vector: np.ndarray, top_k: int = 1, min_score: float = 0.0
    ) -> list[Candidate]:
        """1:N: the top_k persons most similar to one face, best first, scored at least min_score."""
        self._check(top_k, min_score)
        cands = self._candidates(group_id, check_vector(vector)[None, :], top_k)[0]
        return [c for c in cands if c.score >= min_score][:top_k]

    def search_many(
        self, group_id: str, vectors: Sequence[np.ndarray], max_users: int = 1, min_score: float = 80.0
    ) -> list[list[Candidate]]:
        """M:N: for each face of one image, up to max_users persons; a person is given to one face only."""
        self._check(max_users, min_score)
        if not 1 <= len(vectors) <= self._cfg.max_query_faces:
            raise InputError(f"search 1..{self._cfg.max_query_faces} faces at once", code="too_many_faces")
        queries = np.stack([check_vector(v) for v in vectors])
        # Fetch more than max_users per face: a face's best persons may be assigned to its neighbours.
        per_face = self._candidates(group_id, queries, max_users + len(vectors) - 1)
        return assign_faces(per_face, max_users, min_score)

    def search_mean(
        self, group_id: str, vector: np.ndarray, curves: PersonCurves, top_k: int = 1
    ) -> list[Candidate]:
        """1:N by the mean rule (the camera loop's, see PersonCurves): the persons whose faces the index
        finds nearest are re-scored by the cosine to the normalised mean of all their faces, mapped to the
        single-face scale; best first. `cosine` of a candidate is that single-face equivalent."""
        self._check(top_k, 0.0)
        query = check_vector(vector)
        wanted = max(top_k, _MEAN_PERSONS)
        near = self._candidates(group_id, query[None, :], wanted)[0][:wanted]
        if not near:
            return []
        vectors = self._gallery.store.person_embeddings(group_id, self.model_id, [c.person_id for c in near])
        out = []
        for c in near:
            faces = vectors.get(c.person_id)
            if faces is None:  # deleted since the index answered
                continue
            centre = faces.mean(axis=0)
            cos = float(np.clip(query @ centre / max(float(np.linalg.norm(centre)), 1e-12), -1.0, 1.0))
            equivalent = float(curves.single_face_cosine(cos, len(faces)))
            out.append(replace(c, cosine=equivalent, score=float(self.scores.score(equivalent))))
        out.sort(key=lambda c: -c.cosine)
        return out[:top_k]

    def persons(self, group_id: str) -> int:
        """Persons with faces of this model in the group (what a mean-rule search compares); recounted when
        the index changes: any add grows its slots, any delete its deleted count (a face moved to another
        person is both)."""
        index = self._gallery.index(group_id, self.model_id)
        if index is None:
            return 0
        stats = index.stats()
        key = (int(stats["elements"]), int(stats["deleted"]), int(stats["live"]))
        cached = self._persons.get(group_id)
        if cached is None or cached[0] != key:
            count = self._gallery.store.count_persons(group_id, self.model_id) if key[2] else 0
            cached = (key, count)
            self._persons[group_id] = cached
        return cached[1]

    def compare(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        """1:1: (cosine, score) of two embeddings of this model."""
        va, vb = check_vector(a), check_vector(b)
        if va.shape != vb.shape:
            raise InputError("embeddings differ in dimension", code="embedding_dim_mismatch")
        cos = float(np.clip(va @ vb, -1.0, 1.0))
        return cos, self.scores.score(cos)
