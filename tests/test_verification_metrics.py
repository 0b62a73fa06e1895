"""LFW pair protocol on the real pairsDevTrain.txt: balanced folds and the 10-fold accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.evaluation.lfw import load_dataset, read_pairs
from agent.evaluation.metrics import balanced_folds, kfold_accuracy


def _pairs(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    root = data_dir / "lfw-devtrain"
    return read_pairs(root / "pairsDevTrain.txt", load_dataset(root))


def test_folds_hold_both_classes_in_equal_numbers(data_dir: Path) -> None:
    _, same = _pairs(data_dir)
    folds = balanced_folds(same)
    assert len(folds) == 10
    covered = np.sort(np.concatenate(folds))
    assert np.array_equal(covered, np.arange(len(same)))  # every pair tested exactly once
    for fold in folds:
        assert same[fold].sum() == (~same[fold]).sum() == len(same) // 20


def test_kfold_accuracy_counts_errors_of_both_classes(data_dir: Path) -> None:
    _, same = _pairs(data_dir)
    scores = np.where(same, 0.8, 0.2)
    assert kfold_accuracy(scores, same)[0] == 1.0
    # 11 same-person pairs, one in each tenth of them, scored as impostors: one error in every fold
    wrong = np.flatnonzero(same)[::100][:11]
    scores[wrong] = 0.1
    acc, std, thr = kfold_accuracy(scores, same)
    assert abs(acc - (1 - 11 / len(same))) < 1e-9
    assert 0.2 < thr <= 0.8


def test_threshold_at_far_accepts_exactly_k_of_n_impostors() -> None:
    from agent.evaluation.metrics import threshold_at_far

    rng = np.random.default_rng(3)
    impostor = rng.normal(0.3, 0.1, 10_000).astype(np.float32)
    for far in (1e-4, 1e-3, 2.5e-3, 1e-2, 0.5):
        k = int(np.floor(far * len(impostor)))
        t = threshold_at_far(impostor, far)
        assert int(np.sum(impostor >= t)) == k, far  # the comment's k, not k - 1
    assert int(np.sum(impostor >= threshold_at_far(impostor, 1e-5))) == 0  # k = 0: nobody
    assert int(np.sum(impostor >= threshold_at_far(impostor, 1.0))) == len(impostor)
    ties = np.array([0.9, 0.9, 0.9, 0.1] * 250, np.float32)  # 750 tied at the top of 1000
    assert int(np.sum(ties >= threshold_at_far(ties, 0.5))) == 0  # never more than k = 500
