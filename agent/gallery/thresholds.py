"""Open-set thresholds: the score a match needs so that a stranger is named at most at a given rate.

A camera compares every face with all N faces of its group, so "FAR 1e-4 per comparison" lets a stranger
through about N times as often. The rate a door owner sets is the stranger rate (FPIR: the chance that one
unknown face is named as somebody), and the per-comparison rate that gives it is

    FAR = 1 - (1 - FPIR) ** (1 / N)        (~ FPIR / N)

assuming the N comparisons of one stranger are independent. Measured on lfw-devtrain through the whole
pipeline (agent/evaluation/openset.py, galleries of 10 ... 4000 persons), the thresholds this gives hold
the measured FPIR within a factor of ~1.3 at FPIR 1e-2 and ~2.3 at 1e-3 with 4000 persons, where LFW's few
identities listed under two names (the same person twice) dominate the tail; docs/gallery.md has the table.

The cosine at a per-comparison FAR comes from the model space's `far_curve` in the manifest (pair FAR 1e-2 ...
1e-7, measured on 45 M impostor pairs), interpolated linearly in log10(FAR). Below the curve's last point the
last half decade's slope is extended: that is an extrapolation, and `extrapolated` says when it happens
(N / FPIR beyond ~1e7, e.g. more than 10,000 faces at FPIR 1e-3).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agent.errors import ConfigError

MIN_RATE, MAX_RATE = 1e-5, 0.5  # outside this a stranger rate is a typo, not a policy


@dataclass(frozen=True)
class OpenSetThreshold:
    cosine: float
    pair_far: float  # the per-comparison false-accept rate it corresponds to
    faces: int
    extrapolated: bool  # the pair FAR lies beyond the measured curve


class StrangerThresholds:
    """cosine(rate, faces) for one embedding space, from its pair FAR curve (FAR key -> cosine)."""

    def __init__(self, far_curve: Mapping, tail_segments: int = 1) -> None:
        """`tail_segments`: how many half decades at the strict end set the slope extended beyond it (1: the
        last one; more for a curve whose last points rest on few impostor scores)."""
        points = sorted(curve_points(far_curve).items())
        if len(points) < 2:
            raise ConfigError("open-set thresholds need a far_curve with at least two points in the manifest")
        fars = np.array([p[0] for p in points])
        cosines = np.array([p[1] for p in points])
        if np.any(fars <= 0) or np.any(fars >= 1) or np.any(np.diff(cosines) >= 0):
            raise ConfigError(f"far_curve must fall strictly in cosine as FAR rises: {dict(far_curve)}")
        self._log_far = np.log10(fars)  # ascending
        self._cos = cosines  # descending
        self.smallest_far = float(fars[0])
        self.largest_far = float(fars[-1])
        self._tail = max(1, min(int(tail_segments), len(fars) - 1))

    def cosine_at(self, far: float) -> float:
        """The cosine at one pair FAR inside the measured curve (clamped at its ends)."""
        return float(np.interp(math.log10(far), self._log_far, self._cos))

    def pair_far(self, rate: float, faces: int) -> float:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ConfigError(f"stranger rate {rate} outside {MIN_RATE} .. {MAX_RATE}")
        n = max(int(faces), 1)
        return -math.expm1(math.log1p(-rate) / n)  # 1 - (1 - rate) ** (1 / n), exact for tiny rates

    def threshold(self, rate: float, faces: int) -> OpenSetThreshold:
        far = self.pair_far(rate, faces)
        n = max(int(faces), 1)
        if far >= self.smallest_far:
            return OpenSetThreshold(self.cosine_at(far), far, n, False)
        slope = (self._cos[1] - self._cos[0]) / (self._log_far[1] - self._log_far[0])  # per decade, < 0
        cos = float(self._cos[0] + slope * (math.log10(far) - self._log_far[0]))
        return OpenSetThreshold(min(cos, 1.0), far, n, True)


    def log_far_at(self, cosine: float | np.ndarray) -> np.ndarray:
        """log10 of the pair FAR at a cosine: the inverse of `cosine_at`, with the curve's end slopes
        extended both ways (beyond the strict end an extrapolation, as in `threshold`; beyond the loose end
        not a rate any more, above 0, but still in order: the mean rule only maps it back)."""
        c = np.asarray(cosine, dtype=np.float64)
        lg = np.interp(-c, -self._cos, self._log_far)  # -cos ascends with log FAR
        t = self._tail
        strict = (self._log_far[t] - self._log_far[0]) / (self._cos[t] - self._cos[0])  # decades per cosine
        loose = (self._log_far[-1] - self._log_far[-2]) / (self._cos[-1] - self._cos[-2])
        lg = np.where(c > self._cos[0], self._log_far[0] + strict * (c - self._cos[0]), lg)
        return np.where(c < self._cos[-1], self._log_far[-1] + loose * (c - self._cos[-1]), lg)

    def cosine_at_log_far(self, log_far: float | np.ndarray) -> np.ndarray:
        """The inverse of `log_far_at` (end slopes extended), capped at cosine 1."""
        lg = np.asarray(log_far, dtype=np.float64)
        c = np.interp(lg, self._log_far, self._cos)
        t = self._tail
        strict = (self._cos[t] - self._cos[0]) / (self._log_far[t] - self._log_far[0])
        loose = (self._cos[-1] - self._cos[-2]) / (self._log_far[-1] - self._log_far[-2])
        c = np.where(lg < self._log_far[0], self._cos[0] + strict * (lg - self._log_far[0]), c)
        c = np.where(lg > self._log_far[-1], self._cos[-1] + loose * (lg - self._log_far[-1]), c)
        return np.minimum(c, 1.0)


class PersonCurves:
    """The mean rule: a person enrolled with k faces is scored by the cosine to the normalised mean of their
    faces, which sits higher against strangers than one face does, so each k has its own pair FAR curve
    (manifest `person_curves`, measured by agent/evaluation/calibrate.person_far_curves). A mean cosine is
    reported as the single-face cosine of the same pair FAR: one scale for scores, thresholds and events,
    and the stranger rule counts persons, not faces. k above the largest measured k uses that k's curve.

    Guards where the curves are thin: the k-curves end sooner than the one-face curve (they rest on fewer
    impostor pairs), so beyond their end they are extended with the slope of their last 1.5 decades; and the
    mapped cosine is never above the mean cosine itself, nor above what any curve of k' <= k gives (a
    mean of k faces sits at least as high against strangers as one face, or a mean of fewer). So past the
    measured range a person with several photos is never judged more leniently than with one."""

    TAIL_SEGMENTS = 3

    def __init__(self, single: StrangerThresholds, curves: Mapping[str, Mapping]) -> None:
        self.single = single
        self._curves = {
            int(k): StrangerThresholds(c, tail_segments=self.TAIL_SEGMENTS)
            for k, c in curves.items()
            if int(k) >= 2
        }
        if not self._curves:
            raise ConfigError("the mean rule needs person_curves (k >= 2) of the model space (manifest)")
        self.largest_k = max(self._curves)
        self.smallest_far = max(c.smallest_far for c in self._curves.values())  # measured down to here

    def single_face_cosine(self, cosine: float | np.ndarray, faces: int) -> float | np.ndarray:
        """The single-face cosine whose pair FAR equals that of `cosine` to the mean of `faces` faces (the
        strictest of the curves k' <= faces, and at most `cosine`)."""
        if faces <= 1:
            return cosine
        c = np.asarray(cosine, dtype=np.float64)
        ks = [k for k in self._curves if k <= faces] or [min(self._curves)]
        out = c
        for k in ks:
            out = np.minimum(out, self.single.cosine_at_log_far(self._curves[k].log_far_at(c)))
        return float(out) if out.ndim == 0 else out


def curve_points(curve: Mapping) -> dict[float, float]:
    """A manifest `far_curve` ({"far": [...], "cosine": [...]}) or a FAR-key mapping ({"1e-3": cos}) as
    {far: cosine}."""
    if "far" in curve and "cosine" in curve:
        return {float(f): float(c) for f, c in zip(curve["far"], curve["cosine"], strict=True)}
    return {float(k): float(v) for k, v in curve.items()}


def engine_thresholds(engine, overrides: Mapping[str, float] | None = None) -> StrangerThresholds:
    """The open-set thresholds of the space an engine runs: its manifest `far_curve` joined with its FAR
    1e-3..1e-6 thresholds; or the operator's `cosine_thresholds` when they override the manifest."""
    if overrides:
        return StrangerThresholds(overrides)
    points = curve_points(engine.thresholds)
    points.update(curve_points(getattr(engine, "far_curve", None) or {}))
    return StrangerThresholds(points)


def person_rule(
    engine, rule: str, single: StrangerThresholds, overrides: Mapping[str, float] | None = None
) -> PersonCurves | None:
    """The mean rule's curves when `rule` (recognition.person_rule) asks for it, None for the max rule.
    'auto' takes the mean rule where the manifest measured it and the operator did not override the
    one-face thresholds (their own calibration says nothing about means); 'mean' without curves fails."""
    curves = getattr(engine, "person_curves", None) or {}
    if rule == "max" or (rule == "auto" and (not curves or overrides)):
        return None
    if not curves:
        raise ConfigError(
            f"recognition.person_rule: mean needs person_curves for {engine.model_id} in the model manifest "
            "(scripts/build_models.py person-curves); use max or auto"
        )
    return PersonCurves(single, curves)


class RequiredScore:
    """The score a match needs right now, for the camera loop: a fixed `min_score`, or the score whose cosine
    keeps the stranger rate at `rate` for the group's current number of faces (recomputed whenever an
    enrolment, import, deletion or sync changes it). Safe to call from several recognition threads."""

    def __init__(
        self,
        matcher,
        group_id: str,
        *,
        rate: float,
        min_score: float | None,
        thresholds: StrangerThresholds | None,
        log=None,
        per_person: bool = False,
        person_curves: PersonCurves | None = None,
    ) -> None:
        """`per_person`: the mean rule (PersonCurves) compares a face with each person once, so N counts
        persons; otherwise every face is a comparison and N counts faces. `person_curves`: the mean rule's
        curves, for the log's note when a threshold lies beyond them."""
        if min_score is None and thresholds is None:
            raise ConfigError("a stranger rate needs the model space's far_curve, or recognition.min_score")
        self._matcher, self._group, self._rate = matcher, group_id, rate
        self._fixed = min_score
        self._thresholds = thresholds
        self._log = log
        self._count = matcher.persons if per_person else matcher.faces
        self._unit = "person(s)" if per_person else "face(s)"
        self._person_curves = person_curves
        self._lock = threading.Lock()
        self._faces: int | None = None
        self._score = 100.0
        self.current: OpenSetThreshold | None = None

    def __call__(self) -> float:
        if self._fixed is not None:
            return self._fixed
        faces = self._count(self._group)
        with self._lock:
            if faces != self._faces:
                self._update(faces)
            return self._score

    def _update(self, faces: int) -> None:
        found = self._thresholds.threshold(self._rate, faces)
        self._faces, self.current = faces, found
        self._score = float(self._matcher.scores.score(found.cosine))
        if self._log is not None:
            self._log.info(
                "group %r: %d %s, stranger rate %g -> a match needs score %.1f (cosine %.4f, %g per "
                "comparison%s)",
                self._group,
                faces,
                self._unit,
                self._rate,
                self._score,
                found.cosine,
                found.pair_far,
                ("; beyond the measured curve: extrapolated" if found.extrapolated else "")
                + (
                    f"; beyond the mean rule's curves (measured to {self._person_curves.smallest_far:g}): "
                    "extrapolated, never looser than one face"
                    if self._person_curves is not None and found.pair_far < self._person_curves.smallest_far
                    else ""
                ),
            )
