"""The active challenge in the camera loop: one `Challenge` per track, its notices for the kiosk screen.

Owned by one `FaceTracker` (agent/recognition/tracking.py) on a camera with `cameras[].liveness_challenge`
(HIGH only).
When a track is decided known and its liveness has not yet been reported as passed, it gets one challenge:
that is the moment a kiosk greets the person, so the first instruction appears with the greeting. Every later
frame of the track feeds it; each step it completes makes an "issued" notice for the next instruction (the
kiosk shows it then, and that moment starts the step's onset window); its outcome goes into the track's
liveness report (`with_challenge`) before the verdict, so HIGH (with `require_challenge`) passes only after
every requested movement. One challenge per track, never re-issued: re-asking would let a replayed video try
the instructions until one matches what it shows. A person who failed steps out of view and comes back (a
new track, new random instructions).

A person (the gallery person the track was recognized as) who failed `max_failures` challenges within the
last `lockout_s` gets no further challenge until the oldest of those failures is `lockout_s` old: the track's
challenge is decided "locked" at once, a failure. So one person has at most `max_failures` tries in any
`lockout_s` window. A replayed recording passes a random instruction by chance
now and then (docs/liveness.md), so without this an attacker would step in and out of view until it did.

Each change (issued once per step, then one outcome; or only "locked") is a `ChallengeNotice`, kept in a
bounded deque until the pipeline takes it (`drain`). Clocks are the tracker's clock; the pipeline turns them
into wall time.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.gates.challenge import Challenge, ChallengeConfig, draw_instructions
from agent.gates.liveness import LIVENESS_LEVELS, LivenessThresholds
from agent.types import Face

Chooser = Callable[[], str]  # one instruction of CHALLENGES per call (step); None in production: `secrets`
MAX_PEOPLE = 4096  # persons whose recent failures are remembered (oldest forgotten first)


@dataclass(frozen=True)
class ChallengeNotice:
    """A step of a track's challenge was shown (`state` "issued", `step` 1..`steps`) or the challenge was
    decided (`state` one of OUTCOMES, `reason` why when not passed)."""

    track_id: int
    challenge_id: str
    instruction: str
    text: str
    state: str
    issued_clock: float
    deadline_clock: float
    clock: float  # when this notice was made (tracker clock)
    person_id: str | None  # the gallery person the track was recognized as (its outer id)
    step: int = 1
    steps: int = 1
    reason: str | None = None

    @property
    def follows_event(self) -> bool:
        """Made by the decision that made a recognized event (issued, or refused at issue: "locked"), so it is
        published after that event; an outcome goes before the follow-up event it allowed."""
        return self.state in ("issued", "locked")


def challenge_levels() -> dict[str, LivenessThresholds]:
    """The liveness levels of a camera with a challenge: HIGH also requires it (`challenge_failed`)."""
    high = LIVENESS_LEVELS["HIGH"].model_copy(update={"require_challenge": True})
    return {**LIVENESS_LEVELS, "HIGH": high}


@dataclass(frozen=True)
class ActiveChallenge:
    """The challenge of one track (held by the track, freed with it)."""

    challenge: Challenge
    challenge_id: str
    track_id: int
    person_id: str | None  # the gallery person the track was recognized as (its outer id)

    @property
    def state(self) -> str:
        """ "pending" or the outcome: the track's events carry it as `liveness_challenge`."""
        return self.challenge.outcome or "pending"


class TrackChallenges:
    """Issues, feeds and closes the challenges of one camera's tracks; collects their notices (bounded)."""

    def __init__(self, config: ChallengeConfig, max_tracks: int, choose: Chooser | None = None) -> None:
        self.config = config
        self._choose = choose
        # Each track makes at most steps + 1 notices; the pipeline drains them after every frame.
        self._notices: deque[ChallengeNotice] = deque(maxlen=(config.steps + 2) * max_tracks)
        self.counters = {
            "challenges_issued": 0,
            "challenges_passed": 0,
            "challenges_failed": 0,
            "challenges_locked": 0,
        }
        # person -> clocks of their recent failures (at most max_failures each; MAX_PEOPLE persons)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # person -> challenges issued and not yet decided (bounded by the live tracks: freed when decided)
        self._pending: dict[str, int] = {}

    def issue(
        self, track_id: int, clock: float, person_id: str | None, face: Face | None = None
    ) -> ActiveChallenge:
        """A new challenge for a track; `face` (the face of the deciding frame) is the start pose, the frames
        after `clock` are its evidence."""
        instructions = draw_instructions(self.config.steps, self._choose)
        try:
            challenge = Challenge(self.config, instructions, issued_at=clock, start_face=face)
        except ValueError:  # no pose from these keypoints: the first fed frame sets the start pose
            challenge = Challenge(self.config, instructions, issued_at=clock)
        active = ActiveChallenge(challenge, secrets.token_hex(16), track_id, person_id)
        if self.locked(person_id, clock):
            challenge.lock()
            self.counters["challenges_locked"] += 1
            self._notice(active, "locked", clock)
            return active
        self.counters["challenges_issued"] += 1
        if person_id is not None:
            self._pending[person_id] = self._pending.get(person_id, 0) + 1
        self._notice(active, "issued", clock)
        return active

    def locked(self, person_id: str | None, clock: float) -> bool:
        """Has this person failed `max_failures` challenges within the last `lockout_s`, counting the ones
        still pending (several replays at once must not get more tries than one after the other)?"""
        if person_id is None or self.config.lockout_s <= 0:
            return False
        recent = self._failures.get(person_id)
        while recent and clock - recent[0] > self.config.lockout_s:
            recent.popleft()
        return len(recent or ()) + self._pending.get(person_id, 0) >= self.config.max_failures

    def feed(self, active: ActiveChallenge, face: Face, clock: float) -> None:
        """One frame of the track; a notice when this frame decided the challenge."""
        ch = active.challenge
        if ch.result is not None:
            return
        step = ch.step
        try:
            ch.update(face, clock)
        except ValueError:  # keypoints unusable for a pose: this frame says nothing; the deadline still runs
            return
        if ch.result is not None:
            self._decided(active, clock)
        elif ch.step != step:  # the next instruction is shown now
            self._notice(active, "issued", clock)

    def close(self, active: ActiveChallenge, clock: float) -> None:
        """The track ended: a pending challenge is timed out (deadline passed) or abandoned."""
        if active.challenge.result is None:
            active.challenge.abandon(clock)
            self._decided(active, clock)

    def drain(self) -> list[ChallengeNotice]:
        out = list(self._notices)
        self._notices.clear()
        return out

    def _decided(self, active: ActiveChallenge, clock: float) -> None:
        assert active.challenge.outcome is not None
        pid = active.person_id
        if pid is not None and active.challenge.outcome != "locked" and self._pending.get(pid, 0) > 0:
            self._pending[pid] -= 1
            if not self._pending[pid]:
                del self._pending[pid]
        self.counters["challenges_passed" if active.challenge.result else "challenges_failed"] += 1
        if not active.challenge.result and active.person_id is not None:
            self._remember_failure(active.person_id, clock)
        self._notice(active, active.challenge.outcome, clock)

    def _remember_failure(self, person_id: str, clock: float) -> None:
        recent = self._failures.pop(person_id, None) or deque(maxlen=self.config.max_failures)
        recent.append(clock)
        self._failures[person_id] = recent  # most recent last: the oldest person is forgotten first
        if len(self._failures) > MAX_PEOPLE:
            self._failures.popitem(last=False)

    def _notice(self, active: ActiveChallenge, state: str, clock: float) -> None:
        ch = active.challenge
        issued = ch.step_shown_at if ch.step_shown_at is not None else clock
        self._notices.append(
            ChallengeNotice(
                active.track_id,
                active.challenge_id,
                ch.instruction,
                ch.text,
                state,
                issued,
                issued + ch.config.timeout_s,
                clock,
                active.person_id,
                step=ch.step + 1,
                steps=ch.steps,
                reason=ch.reason,
            )
        )
