"""Active liveness challenge of HIGH: a random head-movement request, verified from the keypoint pose.

`Challenge` is pure (no model, no I/O): fed the face of one track frame by frame, it decides whether the
requested movement happened. `with_challenge` puts its outcome into a `LivenessReport`, which
`evaluate_liveness` then reads (`require_challenge` -> `challenge_failed`). The camera loop's wiring (one
challenge per track, published for a kiosk screen) is in agent/recognition/tracking.py; docs/liveness.md has
the rules.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.gates.liveness import LivenessReport
from agent.gates.pose import estimate_pose
from agent.types import Face

# instruction -> (pose angle, sign, text). Directions are the subject's own (see agent/gates/pose.py):
# "turn your head left" = yaw > 0 in an unmirrored camera image. A kiosk that mirrors its preview must not
# flip them.
CHALLENGES = {
    "turn_left": ("yaw", 1.0, "turn your head to your left"),
    "turn_right": ("yaw", -1.0, "turn your head to your right"),
    "look_up": ("pitch", 1.0, "look up"),
    "look_down": ("pitch", -1.0, "look down"),
}
# Final outcomes; "abandoned" is given by the camera loop when the track ends while the challenge is pending,
# "locked" when the person failed too many challenges lately and gets none (ChallengeConfig.max_failures).
OUTCOMES = ("passed", "failed", "timed_out", "abandoned", "locked")


class ChallengeConfig(BaseModel):
    """The active challenge of one camera (a kiosk with a screen). Only valid at liveness level HIGH."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(
        6.0,
        ge=1,
        le=30,
        description="seconds from issuing the challenge to its deadline: reading the text, reacting and "
        "turning (the response time of real users is not measured, docs/liveness.md)",
    )
    min_change: float = Field(
        15.0,
        ge=5,
        le=45,
        description="degrees the requested angle must move the right way from the first frame after the "
        "challenge was issued (the keypoint pose jitters by a few degrees)",
    )
    max_failures: int = Field(
        3,
        ge=1,
        le=20,
        description="failed challenges (failed, timed out, abandoned) one recognized person may have within "
        "any lockout_s window: with that many, the person gets no challenge, and so no HIGH pass, until the "
        "oldest of them is lockout_s old. A replay passes a random challenge by chance (17% measured, "
        "docs/liveness.md), so unlimited retries would let it in",
    )
    lockout_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="the window of max_failures, in seconds; 0 never locks anyone out",
    )


def with_challenge(report: LivenessReport, passed: bool | None) -> LivenessReport:
    """The same report carrying a challenge outcome (evaluate_liveness reads it)."""
    return replace(report, challenge_passed=passed)


class Challenge:
    """A random head-movement request, verified from the keypoint pose on the following frames.

    Passes when the requested angle moves at least `min_change` degrees in the requested direction from the
    pose at the first frame; fails when the opposite movement comes first (`outcome` "failed") or when no
    decision is reached by the deadline (`outcome` "timed_out"). The deadline is `issued_at + timeout_s` when
    `issued_at` is given (the camera loop: the time the kiosk was told), else the first frame + `timeout_s`.
    It proves the face reacts now, so it stops a replayed recording; it does not by itself stop a print
    (bending or tilting a print changes the keypoint pose too): use it with TrackLiveness."""

    def __init__(
        self,
        timeout_s: float = 5.0,
        min_change: float = 15.0,
        instruction: str | None = None,
        *,
        issued_at: float | None = None,
    ) -> None:
        if instruction is not None and instruction not in CHALLENGES:
            raise InputError(f"unknown challenge {instruction!r}", code="invalid_challenge")
        self.instruction = instruction or secrets.choice(sorted(CHALLENGES))  # unpredictable to an attacker
        self.text = CHALLENGES[self.instruction][2]
        self.timeout_s = timeout_s
        self.min_change = min_change
        self.issued_at = issued_at
        self._start: tuple[float, float] | None = None  # (timestamp, angle)
        self.result: bool | None = None
        self.outcome: str | None = None  # one of OUTCOMES once decided

    def update(self, face: Face, timestamp: float) -> bool | None:
        """None while pending, then True (passed) or False (failed); the result sticks. Raises ValueError when
        the keypoints give no pose (the caller skips that frame)."""
        if self.result is not None:
            return self.result
        if self.expired(timestamp):
            return self._decide("timed_out")
        axis, sign, _ = CHALLENGES[self.instruction]
        angle = getattr(estimate_pose(face.keypoints), axis)
        if self._start is None:
            self._start = (timestamp, angle)
            return None
        change = sign * (angle - self._start[1])
        if change >= self.min_change:
            return self._decide("passed")
        if change <= -self.min_change:
            return self._decide("failed")
        if self.expired(timestamp):
            return self._decide("timed_out")
        return None

    def expired(self, timestamp: float) -> bool:
        """The deadline has passed (always False before the first frame when no `issued_at` was given)."""
        start = self.issued_at if self.issued_at is not None else (self._start[0] if self._start else None)
        return start is not None and timestamp - start > self.timeout_s

    def abandon(self, timestamp: float) -> None:
        """The face left before a decision: a final failure, "timed_out" when the deadline had passed."""
        if self.result is None:
            self._decide("timed_out" if self.expired(timestamp) else "abandoned")

    def lock(self) -> None:
        """Not offered: the person is locked out after too many failed challenges (a final failure)."""
        if self.result is None:
            self._decide("locked")

    def _decide(self, outcome: str) -> bool:
        self.outcome = outcome
        self.result = outcome == "passed"
        return self.result
