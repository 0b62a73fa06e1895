"""The detector's fast post-processing gives the same faces as the straightforward implementation it replaced
(scripts/profile_detect.py keeps it as ReferenceDetector), on real frames of a real video, both runtimes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.inference.detector import letterbox, weighted_nms

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


@pytest.fixture(scope="session")
def prof():
    spec = importlib.util.spec_from_file_location("profile_detect", ROOT / "scripts" / "profile_detect.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_detect"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frames(prof, data_dir):
    """50 frames spread over the Hamilton clip (close-ups, a small face, crowd shots), as 640x480."""
    return prof.vga_frames(data_dir / prof.CLIP, 250)[::5]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_fast_path_matches_the_reference_on_50_real_frames(prof, frames, runtime):
    det, ref = prof.detector_pair(runtime)
    assert len(frames) == 50
    found = 0
    for i, frame in enumerate(frames):
        for thr in (None, 0.1):  # the configured 0.5, and a low one with many overlapping candidates to merge
            got, want = det.detect(frame, thr), ref.detect(frame, thr)
            assert prof.max_difference(got, want) <= TOL, (runtime, i, thr, got, want)
            if thr is None:
                found += len(got)
        # Stage by stage on one inference output: decoded candidates and the NMS blend.
        canvas, lb = letterbox(frame, det.size)
        out = det._session.run(ref.blob(canvas))
        rows, scores = det.candidates(out, 0.1)
        want_rows, want_scores = ref.candidates(out, 0.1)
        np.testing.assert_allclose(rows, want_rows, atol=TOL, rtol=0)
        np.testing.assert_allclose(scores, want_scores, atol=TOL, rtol=0)
        blended = weighted_nms(rows, scores, 0.3)
        want_blended = prof.reference_weighted_nms(want_rows, want_scores, 0.3)
        assert len(blended) == len(want_blended)
        for (row, s), (want_row, want_s) in zip(blended, want_blended, strict=True):
            np.testing.assert_allclose(row, want_row, atol=TOL, rtol=0)
            assert abs(s - want_s) <= TOL
    assert found >= 40, f"only {found} faces in 50 frames: the comparison would prove little"


def test_a_score_exactly_at_the_threshold_is_kept_as_before(prof, frames):
    """The logit pre-filter must not drop an anchor whose sigmoid equals the threshold."""
    det, ref = prof.detector_pair("openvino")
    canvas, _ = letterbox(frames[20], det.size)
    out = det._session.run(ref.blob(canvas))
    _, scores = ref.candidates(out, 0.05)
    assert scores.size >= 3
    for thr in np.sort(scores)[-3:]:
        thr = float(thr)
        rows, got = det.candidates(out, thr)
        want_rows, want = ref.candidates(out, thr)
        assert got.size == want.size >= 1 and thr in got
        np.testing.assert_array_equal(rows, want_rows)


def test_weighted_nms_matches_the_reference_with_degenerate_boxes(prof):
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 30))
        centre = rng.uniform(0.2, 0.8, (n, 2))
        half = rng.uniform(-0.02, 0.2, (n, 2))  # some negative: a box with x2 < x1 or y2 < y1
        kps = rng.uniform(0, 1, (n, 12))
        boxes = np.concatenate([centre - half, centre + half, kps], axis=1).astype(np.float32)
        if trial % 10 == 0:
            boxes[0, 2:4] = boxes[0, 0:2]  # zero area
        scores = rng.uniform(0.5, 1.0, n)
        got, want = weighted_nms(boxes, scores, 0.3), prof.reference_weighted_nms(boxes, scores, 0.3)
        assert len(got) == len(want), trial
        for (row, s), (want_row, want_s) in zip(got, want, strict=True):
            np.testing.assert_array_equal(row, want_row)
            assert s == want_s
