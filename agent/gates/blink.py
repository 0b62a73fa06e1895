"""Blink cue of the liveness gate: eye openness per frame of one track -> counted blinks.

A blink is the eyes closing and opening again quickly: eye openness (agent/inference/mesh.py: lid gap / eye
width) falls well below the track's own open-eye baseline for a short run of frames and comes back. A print
or a screen showing a still photo never does that, whatever it is moved through; a live person blinks every
few seconds. The baseline is the track's own (a running median of its recent open-eye samples) because
openness differs between people and rises when the head turns (the eye's width is foreshortened).

Pure: no model, no I/O. The face mesh that measures openness is run by the caller
(agent/recognition/tracking.py), only when `BlinkConfig` says a sample is wanted, so its cost is bounded here
too.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class BlinkConfig(BaseModel):
    """Blink detection on the camera loop (runs the face mesh on tracked faces; docs/liveness.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="run the face mesh for the blink cue on cameras whose liveness level uses blinks"
    )
    model: str = Field("face-mesh", min_length=1, description="face mesh model in the model manifest")
    min_face_px: int = Field(
        64, ge=24, le=4096, description="smaller faces are not meshed: their eyelids are a pixel or two"
    )
    min_interval_s: float = Field(
        0.045,
        ge=0,
        le=1,
        description="at most one mesh per track this often (0.045: every frame at 20 fps, every 2nd at 30); "
        "a blink keeps the eyes closed about 0.1-0.3 s",
    )
    min_face_probability: float = Field(
        0.5, ge=0, le=1, description="mesh samples whose face flag is lower are dropped (eyes not seen)"
    )
    close_ratio: float = Field(
        0.72, gt=0, lt=1, description="openness below this fraction of the baseline counts as closed"
    )
    reopen_ratio: float = Field(
        0.85, gt=0, le=1.5, description="openness back above this fraction of the baseline ends the blink"
    )
    max_closed_s: float = Field(
        0.5, gt=0, le=5, description="eyes closed longer than this are not a blink (a nap, a look down)"
    )
    min_closed_samples: int = Field(1, ge=1, le=30, description="closed samples a blink needs")
    baseline_samples: int = Field(
        15, ge=3, le=300, description="recent open-eye samples whose median is the baseline"
    )
    min_baseline_samples: int = Field(5, ge=2, le=300, description="open samples before anything is judged")
    min_open: float = Field(
        0.12, ge=0, le=1, description="a baseline below this (squinting, eyes never seen open) judges nothing"
    )
    max_gap_s: float = Field(
        0.5, gt=0, le=10, description="a longer pause between samples restarts the trace (a blink may hide)"
    )
    stop_after: int = Field(
        1, ge=1, le=100, description="blinks after which the track's mesh stops running (evidence is in)"
    )


class BlinkDetector:
    """Counts blinks in one track's eye-openness samples. Not thread-safe; memory bounded by the config."""

    def __init__(self, config: BlinkConfig | None = None) -> None:
        self.config = config or BlinkConfig()
        self.blinks = 0
        self.samples = 0
        self._open: deque[float] = deque(maxlen=self.config.baseline_samples)
        self._t_last: float | None = None
        self._t_sampled: float | None = None  # time of the last wanted sample (rate bound)
        self._closed_since: float | None = None  # start of the current closed run
        self._closed_baseline = 0.0
        self._closed_n = 0
        self.min_ratio = float("inf")  # lowest openness / baseline seen (for the measures)

    def wants(self, face_width: float, timestamp: float) -> bool:
        """Should the caller run the mesh on this frame? Bounds the cost (see BlinkConfig)."""
        c = self.config
        if self.blinks >= c.stop_after or face_width < c.min_face_px:
            return False
        return self._t_sampled is None or timestamp - self._t_sampled >= c.min_interval_s

    @property
    def baseline(self) -> float | None:
        if len(self._open) < self.config.min_baseline_samples:
            return None
        return float(np.median(self._open))

    def update(self, openness: float, timestamp: float) -> bool:
        """Feed one sample (seconds, increasing). True when it completes a blink."""
        c = self.config
        self.samples += 1
        self._t_sampled = timestamp
        if self._t_last is not None and timestamp - self._t_last > c.max_gap_s:
            self._restart()
        self._t_last = timestamp
        if self._closed_since is not None:
            return self._while_closed(openness, timestamp)
        base = self.baseline
        if base is not None and base >= c.min_open:
            ratio = openness / base
            self.min_ratio = min(self.min_ratio, ratio)
            if ratio < c.close_ratio:
                self._closed_since, self._closed_baseline, self._closed_n = timestamp, base, 1
                return False
        self._open.append(openness)
        return False

    def _while_closed(self, openness: float, timestamp: float) -> bool:
        c = self.config
        assert self._closed_since is not None
        ratio = openness / self._closed_baseline
        self.min_ratio = min(self.min_ratio, ratio)
        if ratio < c.reopen_ratio:
            self._closed_n += ratio < c.close_ratio
            return False
        # Reopened: a blink only when the closure was short (a long one is a look down or closed eyes).
        blink = timestamp - self._closed_since <= c.max_closed_s and self._closed_n >= c.min_closed_samples
        self._closed_since = None
        self._open.append(openness)
        self.blinks += blink
        return blink

    def _restart(self) -> None:
        self._open.clear()
        self._closed_since = None

    def measures(self) -> dict[str, float]:
        """Names documented in docs/liveness.md; only finite values (JSON-safe)."""
        out = {"blinks": float(self.blinks), "eye_samples": float(self.samples)}
        if self.baseline is not None:
            out["eye_baseline"] = self.baseline
        if np.isfinite(self.min_ratio):
            out["eye_min_ratio"] = self.min_ratio
        return out
