"""The kiosk's challenge messages: `<prefix>/<device>/cameras/<camera>/challenge`, schema
`face-agent/challenge/1` (docs/mqtt.md). One `issued` message per step of a track's challenge (the kiosk
shows `text` at once: the step's response window starts when it was issued), one when it is decided
(`passed`, `failed`, `timed_out`, `abandoned`, `locked`; `reason` says why it did not pass). They go
through the same outbox as events (QoS 1, in order with them), so a kiosk must ignore an `issued` message
whose `deadline` has passed: after an outage it arrives late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.errors import InputError
from agent.gates.challenge import CHALLENGES, OUTCOMES, REASONS
from agent.publish.outbox import OutMessage
from agent.publish.payloads import SCHEMA_VERSION, encode, iso_time
from agent.publish.topics import Topics, check_level

SCHEMA_CHALLENGE = f"face-agent/challenge/{SCHEMA_VERSION}"
STATES = ("issued", *OUTCOMES)


@dataclass(frozen=True)
class ChallengeMessage:
    """One challenge change on one camera. Times are Unix seconds."""

    camera_id: str
    track_id: int
    challenge_id: str
    instruction: str
    text: str
    state: str  # "issued" or an outcome
    issued_at: float
    deadline: float
    at: float  # when this state was reached (= issued_at for "issued")
    person_id: str | None = None
    step: int = 1  # 1-based step of the instruction; the decision carries the step it was made at
    steps: int = 1
    reason: str | None = None  # why a decided challenge did not pass (REASONS); None while issued or passed

    def __post_init__(self) -> None:
        check_level(self.camera_id, "camera id")
        if self.instruction not in CHALLENGES or self.text != CHALLENGES[self.instruction][2]:
            raise InputError(f"unknown challenge {self.instruction!r}", code="invalid_event")
        if self.state not in STATES:
            raise InputError(f"challenge state must be one of {STATES}", code="invalid_event")
        steps_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.steps, self.step))
        if not (steps_ok and 1 <= self.step <= self.steps <= 5):
            raise InputError("challenge step must be 1..steps (steps 1..5)", code="invalid_event")
        if self.reason is not None and (self.reason not in REASONS or self.state in ("issued", "passed")):
            raise InputError(
                f"challenge reason must be one of {REASONS}, and only on a failed outcome",
                code="invalid_event",
            )
        if not isinstance(self.track_id, int) or self.track_id < 0:
            raise InputError("track_id must be a non-negative int", code="invalid_event")
        if not (isinstance(self.challenge_id, str) and 0 < len(self.challenge_id) <= 64):
            raise InputError("challenge_id must be a short string", code="invalid_event")
        times = (self.issued_at, self.deadline, self.at)
        if not all(math.isfinite(t) and 0 <= t <= 1e11 for t in times) or self.deadline < self.issued_at:
            raise InputError(
                "challenge times must be Unix seconds, deadline after issue", code="invalid_event"
            )


def challenge_payload(msg: ChallengeMessage, device_id: str) -> dict[str, Any]:
    """The JSON body (without `seq` / `published_at`, added when it leaves the outbox)."""
    return {
        "schema": SCHEMA_CHALLENGE,
        "challenge_id": msg.challenge_id,
        "device_id": device_id,
        "camera_id": msg.camera_id,
        "track_id": msg.track_id,
        "person_id": msg.person_id,
        "state": msg.state,
        "instruction": msg.instruction,
        "text": msg.text,
        "step": msg.step,
        "steps": msg.steps,
        "reason": msg.reason,
        "issued_at": iso_time(msg.issued_at),
        "deadline": iso_time(msg.deadline),
        "decided_at": None if msg.state == "issued" else iso_time(msg.at),
    }


def challenge_messages(msg: ChallengeMessage, topics: Topics) -> list[OutMessage]:
    body = encode(challenge_payload(msg, topics.device_id))
    return [OutMessage(topics.challenge(msg.camera_id), body, stamp=True)]
