"""Verification metrics: 10-fold pair accuracy, thresholds at a false-accept rate, TAR at FAR, ROC."""

from __future__ import annotations

import numpy as np

FARS = (1e-3, 1e-4, 1e-5, 1e-6)


def far_key(far: float) -> str:
    """1e-4 -> "1e-4", the key used in the manifest and in API answers."""
    mantissa, exp = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def pair_scores(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity per pair; a pair with a missing face scores -1 (predicted 'different')."""
    s = np.einsum("ij,ij->i", emb[pairs[:, 0]], emb[pairs[:, 1]])
    return np.where(np.isnan(s), -1.0, s)


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    cands = np.unique(scores)
    acc = [(np.mean((scores >= t) == same), t) for t in cands]
    return max(acc)[1]


def balanced_folds(same: np.ndarray, folds: int = 10) -> list[np.ndarray]:
    """LFW's fold layout: fold k holds the k-th block of the same-person pairs and the k-th block of the
    different-person pairs, in file order. Splitting the file into contiguous blocks instead would give
    single-class folds, because pairsDevTrain lists all its same-person pairs first."""
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    return [
        np.concatenate([p, n])
        for p, n in zip(np.array_split(pos, folds), np.array_split(neg, folds), strict=True)
    ]


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float, float]:
    """LFW protocol: pick the threshold on 9 folds, measure on the 10th. Returns mean, std, mean threshold."""
    same = np.asarray(same, bool)
    idx = np.arange(len(scores))
    accs, thrs = [], []
    for test in balanced_folds(same, folds):
        train = np.setdiff1d(idx, test)
        t = _best_threshold(scores[train], same[train])
        accs.append(np.mean((scores[test] >= t) == same[test]))
        thrs.append(t)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thrs))


def all_pair_scores(emb: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Genuine scores (all same-identity pairs) and impostor scores (all different-identity pairs, i<j).
    Rows that are NaN (no face) are left out. Impostors are returned as float32 (tens of millions)."""
    ok = ~np.isnan(emb[:, 0])
    emb, labels = emb[ok], labels[ok]
    genuine, impostor = [], []
    n = len(emb)
    for start in range(0, n, chunk):
        block = emb[start : start + chunk] @ emb.T
        rows = np.arange(start, min(start + chunk, n))
        upper = np.arange(n)[None, :] > rows[:, None]
        same = labels[rows][:, None] == labels[None, :]
        genuine.append(block[upper & same])
        impostor.append(block[upper & ~same].astype(np.float32))
    return np.concatenate(genuine), np.concatenate(impostor)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The smallest cosine threshold whose false-accept rate over `impostor` is <= far: it accepts the
    k = floor(far * n) highest impostor scores (fewer when scores tie at the boundary), never more."""
    scores = np.asarray(impostor)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    n = len(scores)
    k = int(np.floor(far * n))
    if k >= n:
        return float(np.min(scores))
    # The (k+1)-th highest score is refused; everything strictly above it (the k highest) is accepted. The
    # next representable value is taken in the scores' own precision (float32 scores compare in float32).
    refused = np.partition(scores, n - k - 1)[n - k - 1]
    return float(np.nextafter(refused, scores.dtype.type(np.inf)))


def tar_at(genuine: np.ndarray, threshold: float) -> float:
    return float(np.mean(genuine >= threshold))


def roc_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(far, tar) on a log-spaced FAR grid from 1/len(impostor) to 1."""
    fars = np.logspace(np.log10(max(1.0 / len(impostor), 1e-7)), 0, points)
    srt = np.sort(impostor)
    thr = srt[np.clip((len(srt) * (1 - fars)).astype(int), 0, len(srt) - 1)]
    tars = np.array([np.mean(genuine >= t) for t in thr])
    return fars, tars
