"""Open-set identification, the question a door asks: search one face against everybody enrolled.

Two error rates (NIST FRVT 1:N vocabulary):
- FPIR (false-positive identification rate): the share of *stranger* searches that return somebody at or
  above the threshold. This is what `recognition.max_stranger_rate` bounds.
- FNIR (false-negative identification rate): the share of searches by an *enrolled* person that do not return
  them at rank 1 at or above the threshold.

Protocol on an LFW-format set: each identity is enrolled with its first `per_person` images that have a face;
the gallery of a trial is a random set of G identities. Every image is a stranger search against a gallery
that does not hold its identity (its own column is left out), so even G = 4000 of 4038 identities has
thousands of stranger searches; every non-enrolment image of an enrolled identity is a mated search. Trials
repeat with other random galleries. Scores are per person: the best of the person's enrolled faces (`max`)
or the cosine to the mean of their faces (`mean`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.evaluation.metrics import threshold_at_far
from agent.gallery.thresholds import PersonCurves, StrangerThresholds


@dataclass(frozen=True)
class Searches:
    """The outcome of every search of one gallery size, over all trials."""

    size: int
    stranger_max: np.ndarray  # best score of each stranger search
    mated_own: np.ndarray  # score of the right person, per mated search
    mated_other: np.ndarray  # best score of anybody else in the gallery, per mated search

    def fpir(self, threshold: float) -> float:
        return float(np.mean(self.stranger_max >= threshold))

    def fnir(self, threshold: float) -> float:
        hit = (self.mated_own >= threshold) & (self.mated_own > self.mated_other)
        return float(1.0 - np.mean(hit))

    def threshold_at_fpir(self, fpir: float) -> float:
        """The lowest threshold whose FPIR over these searches is <= fpir (same rule as pair FAR)."""
        return threshold_at_far(self.stranger_max, fpir)


def enrolment(labels: np.ndarray, found: np.ndarray, per_person: int = 1) -> np.ndarray:
    """Bool mask of enrolment images: the first `per_person` images with a face of each identity."""
    mask = np.zeros(len(labels), bool)
    taken: dict[int, int] = {}
    for i in np.flatnonzero(found):
        ident = int(labels[i])
        if taken.get(ident, 0) < per_person:
            mask[i] = True
            taken[ident] = taken.get(ident, 0) + 1
    return mask


def person_scores(
    emb: np.ndarray,
    labels: np.ndarray,
    enrolled: np.ndarray,
    rule: str = "max",
    curves: PersonCurves | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(probes x identities) score matrix over the images with a face, and the identity of each column.

    `max`: best cosine over the person's enrolled faces; `mean`: cosine to their normalised mean embedding,
    mapped to the one-face scale by `curves` (the agent's mean rule) when given."""
    ids = np.unique(labels[enrolled])
    if rule == "mean":
        centres = np.stack([emb[enrolled & (labels == i)].mean(axis=0) for i in ids])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        out = (emb @ centres.T).astype(np.float32)
        if curves is not None:
            counts = np.array([np.count_nonzero(enrolled & (labels == i)) for i in ids])
            for k in np.unique(counts):
                cols = counts == k
                out[:, cols] = curves.single_face_cosine(out[:, cols], int(k))
        return out, ids
    if rule != "max":
        raise ValueError(f"unknown rule {rule!r}")
    cols = np.flatnonzero(enrolled)
    if len(cols) == len(ids):  # one face per person: the columns are the persons, in label order
        order = cols[np.argsort(labels[cols], kind="stable")]
        return (emb @ emb[order].T).astype(np.float32), ids
    raw = emb @ emb[cols].T
    col_id = np.searchsorted(ids, labels[cols])
    out = np.full((len(emb), len(ids)), -np.inf, np.float32)
    np.maximum.at(out.T, col_id, raw.T)  # per identity, the best of its columns
    return out, ids


def run_searches(
    emb: np.ndarray,
    labels: np.ndarray,
    found: np.ndarray,
    sizes: list[int],
    *,
    per_person: int = 1,
    rule: str = "max",
    trials: int = 10,
    seed: int = 0,
    curves: PersonCurves | None = None,
) -> dict[int, Searches]:
    """Every stranger and mated search for each gallery size (see the module docstring)."""
    enrolled = enrolment(labels, found, per_person)
    keep = np.flatnonzero(found)
    scores, ids = person_scores(emb[keep], labels[keep], enrolled[keep], rule, curves)
    own_col = np.searchsorted(ids, labels[keep])
    has_own = (own_col < len(ids)) & (ids[np.minimum(own_col, len(ids) - 1)] == labels[keep])
    rows = np.arange(len(keep))
    own = np.where(has_own, scores[rows, np.minimum(own_col, len(ids) - 1)], -np.inf).astype(np.float32)
    scores[rows[has_own], own_col[has_own]] = -np.inf  # a search never meets its own identity as a stranger
    mated = has_own & ~enrolled[keep]  # non-enrolment images of enrolled identities
    if max(sizes) >= len(ids):
        raise ValueError(f"gallery sizes must stay below the {len(ids)} identities with a face")
    rng = np.random.default_rng(seed)
    parts: dict[int, list[list[np.ndarray]]] = {g: [[], [], []] for g in sizes}
    for _ in range(trials):
        perm = rng.permutation(len(ids))
        rank = np.empty(len(ids), int)
        rank[perm] = np.arange(len(ids))
        best = np.maximum.accumulate(scores[:, perm], axis=1)  # best[:, k]: best of the first k+1 columns
        own_rank = np.where(has_own, rank[np.minimum(own_col, len(ids) - 1)], len(ids))
        for g in sizes:
            inside = own_rank < g  # the own identity sits among the first g columns (scored -inf there)
            stranger = np.where(inside, best[:, g], best[:, g - 1])  # always g other identities
            parts[g][0].append(stranger)
            sel = mated & inside
            parts[g][1].append(own[sel])
            parts[g][2].append(best[sel, g - 1])
    return {
        g: Searches(g, np.concatenate(p[0]), np.concatenate(p[1]), np.concatenate(p[2]))
        for g, p in parts.items()
    }


SIZES = (10, 100, 500, 1000, 2000, 4000)  # gallery sizes `eval` reports (those below the set's identities)
FPIRS = (1e-2, 1e-3)


def summary(
    emb: np.ndarray,
    labels: np.ndarray,
    found: np.ndarray,
    sizes=SIZES,
    fpirs=FPIRS,
    trials: int = 5,
    stranger: StrangerThresholds | None = None,
    per_person: int = 1,
    curves: PersonCurves | None = None,
) -> dict[str, dict[str, float]]:
    """Per gallery size: the cosine threshold and the FNIR at each FPIR, and the searches behind them. With
    `stranger` (the thresholds the agent derives from the manifest), also the FPIR measured at the threshold
    the agent would use for each rate, and the FNIR there: the check that the configured rate holds.
    `per_person` photos enrolled per identity; with `curves` scored by the agent's mean rule (N = persons),
    else by the best face (N = faces)."""
    n_ids = len(np.unique(labels[found]))
    usable = [g for g in sizes if g < n_ids]
    if not usable:
        return {}
    clean = np.where(found[:, None], emb, 0.0).astype(np.float32)
    enrolled = enrolment(labels, found, per_person)
    faces_per_id = np.count_nonzero(enrolled) / len(np.unique(labels[enrolled]))
    rule = "mean" if curves is not None else "max"
    searched = run_searches(
        clean, labels, found, usable, per_person=per_person, rule=rule, trials=trials, curves=curves
    )
    out: dict[str, dict[str, float]] = {}
    for g, s in searched.items():
        n = g if curves is not None else max(1, round(g * faces_per_id))  # what the agent counts
        row: dict[str, float] = {"stranger_searches": len(s.stranger_max), "mated_searches": len(s.mated_own)}
        for fpir in fpirs:
            t = s.threshold_at_fpir(fpir)
            row[f"cosine@{fpir:g}"] = round(t, 5)
            row[f"fnir@{fpir:g}"] = round(s.fnir(t), 4)
            if stranger is not None:
                used = stranger.threshold(fpir, n).cosine
                row[f"agent_fpir@{fpir:g}"] = round(s.fpir(used), 5)
                row[f"agent_fnir@{fpir:g}"] = round(s.fnir(used), 4)
        out[str(g)] = row
    return out
