"""Active liveness challenge of HIGH: random head movements in a row, each timed from the moment it is shown.

`Challenge` is pure (no model, no I/O): fed the face of one track frame by frame, it decides whether the
requested movements happened, in order and in time. `with_challenge` puts its outcome into a
`LivenessReport`, which `evaluate_liveness` then reads (`require_challenge` -> `challenge_failed`). The camera
loop's wiring (one challenge per track, each step published for a kiosk screen) is in
agent/recognition/challenge.py; docs/liveness.md has the rules and the measurements.

Why steps and windows: a replayed recording cannot know when an instruction appears. One random instruction
("turn right") is passed by chance by any recording that happens to turn right soon after (22.6% measured on
the real videos, docs/liveness.md). Each step here must *start* moving the right way inside a response-onset
window counted from the moment that step was shown (not before a human can react, not long after), reach the
full movement and hold it; the next step is drawn on the other axis and shown only once the previous one is
held, so a recording must match several random instructions at random moments in a row.

Step rules (angles from the keypoint pose, agent/gates/pose.py; `change` = movement the requested way since
the step's first frame):
  - |change| the wrong way >= min_change: failed (`wrong_direction`);
  - change >= onset_change earlier than onset_min_s after the step was shown: failed (`early`): the movement
    began before the instruction could have been read. The onset time is interpolated between the last frame
    below `onset_change` and the first one above it, so a gap in the frames does not hide an early start;
  - no onset by onset_max_s (interpolated the same way): timed out (`late`);
  - a gap of more than max_gap_s before the onset frame, or no frame of the face within max_gap_s of the
    instruction (the start pose unknown): timed out (`no_view`): the timing cannot be checked;
  - change >= min_change held for hold_s (every frame of it): the step passes; the last one passes the
    challenge;
  - the step's deadline (shown + timeout_s) passes first: timed out (`deadline`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
# Why a challenge did not pass (`Challenge.reason`).
REASONS = ("wrong_direction", "early", "late", "no_view", "deadline", "abandoned", "locked")


class ChallengeConfig(BaseModel):
    """The active challenge of one camera (a kiosk with a screen). Only valid at liveness level HIGH."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(
        3,
        ge=1,
        le=5,
        description="random instructions in a row, alternating between turning (yaw) and nodding (pitch); "
        "every one must be followed in time (how often an uncued replay passes: docs/liveness.md)",
    )
    timeout_s: float = Field(
        4.0,
        ge=1,
        le=30,
        description="seconds from showing one instruction to its deadline: reacting, turning and holding",
    )
    min_change: float = Field(
        15.0,
        ge=5,
        le=45,
        description="degrees the requested angle must move the right way from the step's first frame (the "
        "keypoint pose jitters by a few degrees)",
    )
    onset_change: float = Field(
        6.0,
        ge=2,
        le=30,
        description="degrees the right way that count as the start of the response (above the pose jitter)",
    )
    onset_min_s: float = Field(
        0.2,
        ge=0,
        le=2,
        description="a response may not start earlier than this after the instruction was shown: nobody "
        "reads and reacts faster (simple visual reaction times are 0.2-0.3 s); a recording that is already "
        "moving that way fails",
    )
    onset_max_s: float = Field(
        2.0,
        gt=0,
        le=30,
        description="the response must have started by then (the cooperative response times of real users "
        "were not measured: scripts/challenge_session.py records them)",
    )
    max_gap_s: float = Field(
        0.5,
        gt=0,
        le=5,
        description="the longest gap between frames of the face that still lets the onset be timed (a replay "
        "must not dodge the onset window by hiding): longer gaps, or a first frame later than this after the "
        "instruction, time the step out (`no_view`)",
    )
    hold_s: float = Field(
        0.3,
        ge=0,
        le=5,
        description="seconds the full movement must be held (every frame) before the step counts",
    )
    max_failures: int = Field(
        3,
        ge=1,
        le=20,
        description="failed challenges (failed, timed out, abandoned) one recognized person may have within "
        "any lockout_s window: with that many, the person gets no challenge, and so no HIGH pass, until the "
        "oldest of them is lockout_s old; bounds the attempts of a replay",
    )
    lockout_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="the window of max_failures, in seconds; 0 never locks anyone out",
    )

    @model_validator(mode="after")
    def _windows(self) -> ChallengeConfig:
        if not self.onset_min_s < self.onset_max_s <= self.timeout_s:
            raise ValueError("need onset_min_s < onset_max_s <= timeout_s")
        if self.onset_change >= self.min_change:
            raise ValueError("onset_change must be below min_change")
        return self


def with_challenge(report: LivenessReport, passed: bool | None) -> LivenessReport:
    """The same report carrying a challenge outcome (evaluate_liveness reads it)."""
    return replace(report, challenge_passed=passed)


def draw_instructions(steps: int, choose: Callable[[], str] | None = None) -> tuple[str, ...]:
    """`steps` random instructions, each on the other axis than the one before (a return from a turn must
    not count as the opposite turn). `choose` forces them (tests); None: drawn with `secrets`."""
    out: list[str] = []
    for _ in range(steps):
        if choose is not None:
            out.append(choose())
            continue
        pool = sorted(i for i in CHALLENGES if not out or CHALLENGES[i][0] != CHALLENGES[out[-1]][0])
        out.append(secrets.choice(pool))
    return tuple(out)


@dataclass
class _Step:
    shown_at: float | None  # None: the first frame sets it (no issue time given)
    base: float | None = None  # the angle when the step was shown (or at its first frame)
    onset: float | None = None  # when the response started (interpolated)
    held_since: float | None = None  # first frame of the current run at >= min_change
    prev: tuple[float, float] | None = None  # (time, change) of the last frame, for the onset's interpolation


class Challenge:
    """Random head movements in a row (see the module docstring), verified from the keypoint pose.

    `issued_at` is when the first instruction was shown (the camera loop: when the kiosk was told); without
    it the first frame counts as that moment. Each later step is shown at the frame that completed the one
    before (`step_shown_at`; the caller publishes `text` then). `result` is None while pending, then sticks.
    It proves the face reacts now, so it stops a replayed recording; it does not by itself stop a print
    (bending or tilting a print changes the keypoint pose too): use it with TrackLiveness."""

    def __init__(
        self,
        config: ChallengeConfig | None = None,
        instructions: Sequence[str] | None = None,
        *,
        issued_at: float | None = None,
        start_face: Face | None = None,
    ) -> None:
        """`start_face`: the face at the moment the first instruction is shown (the camera loop: the frame
        that decided the track), the start pose; without it the first fed frame is."""
        self.config = config or ChallengeConfig()
        chosen = tuple(instructions) if instructions is not None else draw_instructions(self.config.steps)
        unknown = [i for i in chosen if i not in CHALLENGES]
        if unknown or not chosen:
            raise InputError(f"unknown challenge {unknown or chosen!r}", code="invalid_challenge")
        self.instructions = chosen
        self.issued_at = issued_at
        self.step = 0  # index of the current step
        self._step = _Step(issued_at)
        if start_face is not None and issued_at is not None:
            self._start_pose(self._step, start_face, issued_at)
        self.result: bool | None = None
        self.outcome: str | None = None  # one of OUTCOMES once decided
        self.reason: str | None = None  # one of REASONS when not passed
        # (instruction, shown at, response onset, held at) of each completed step: response times
        self.history: list[tuple[str, float, float, float]] = []

    @property
    def instruction(self) -> str:
        return self.instructions[min(self.step, len(self.instructions) - 1)]

    @property
    def text(self) -> str:
        return CHALLENGES[self.instruction][2]

    @property
    def steps(self) -> int:
        return len(self.instructions)

    @property
    def step_shown_at(self) -> float | None:
        return self._step.shown_at

    @property
    def deadline(self) -> float | None:
        shown = self._step.shown_at
        return None if shown is None else shown + self.config.timeout_s

    def _start_pose(self, st: _Step, face: Face, timestamp: float) -> None:
        """The step's start pose (raises ValueError when the keypoints give no pose)."""
        axis = CHALLENGES[self.instructions[self.step]][0]
        st.base = getattr(estimate_pose(face.keypoints), axis)
        st.prev = (timestamp, 0.0)

    def update(self, face: Face, timestamp: float) -> bool | None:
        """None while pending, then True (passed) or False; the result sticks. Raises ValueError when the
        keypoints give no pose (the caller skips that frame)."""
        if self.result is not None:
            return self.result
        cfg, st = self.config, self._step
        if st.shown_at is None:
            st.shown_at = timestamp
        since = timestamp - st.shown_at
        if since > cfg.timeout_s:
            return self._decide("timed_out", "deadline")
        axis, sign, _ = CHALLENGES[self.instruction]
        angle = getattr(estimate_pose(face.keypoints), axis)
        if st.base is None:
            if since > cfg.max_gap_s:  # the pose when the instruction appeared is unknown
                return self._decide("timed_out", "no_view")
            st.base, st.prev = angle, (timestamp, 0.0)
            return None
        change = sign * (angle - st.base)
        if change <= -cfg.min_change:
            return self._decide("failed", "wrong_direction")
        if st.onset is None:
            t_prev, c_prev = st.prev if st.prev is not None else (st.shown_at, 0.0)
            if change >= cfg.onset_change:
                if timestamp - t_prev > cfg.max_gap_s:
                    return self._decide("timed_out", "no_view")
                frac = (cfg.onset_change - c_prev) / (change - c_prev) if change > c_prev else 1.0
                onset = t_prev + min(max(frac, 0.0), 1.0) * (timestamp - t_prev)
                if onset - st.shown_at < cfg.onset_min_s:
                    return self._decide("failed", "early")
                if onset - st.shown_at > cfg.onset_max_s:
                    return self._decide("timed_out", "late")
                st.onset = onset
            elif since > cfg.onset_max_s:
                return self._decide("timed_out", "late")
        st.prev = (timestamp, change)
        if change < cfg.min_change:
            st.held_since = None
            return None
        if st.held_since is None:
            st.held_since = timestamp
        if timestamp - st.held_since < cfg.hold_s:
            return None
        self.history.append(
            (self.instruction, st.shown_at, st.onset if st.onset is not None else st.held_since, timestamp)
        )
        if self.step + 1 >= len(self.instructions):
            return self._decide("passed", None)
        self.step += 1
        self._step = _Step(timestamp)  # the next instruction is shown now, from the pose of this frame
        self._start_pose(self._step, face, timestamp)
        return None

    def expired(self, timestamp: float) -> bool:
        """The current step's deadline has passed (False before the first frame without an issue time)."""
        deadline = self.deadline
        return deadline is not None and timestamp > deadline

    def abandon(self, timestamp: float) -> None:
        """The face left before a decision: a final failure, "timed_out" when the deadline had passed."""
        if self.result is None:
            if self.expired(timestamp):
                self._decide("timed_out", "deadline")
            else:
                self._decide("abandoned", "abandoned")

    def lock(self) -> None:
        """Not offered: the person is locked out after too many failed challenges (a final failure)."""
        if self.result is None:
            self._decide("locked", "locked")

    def _decide(self, outcome: str, reason: str | None) -> bool:
        self.outcome, self.reason = outcome, reason
        self.result = outcome == "passed"
        return self.result
