"""Access decision policy: a pure function from a recognition event and the policy to granted/denied + why.

It fails closed: any missing evidence the policy asks for (no person, no FAR level, a gate that did not run)
denies. Every failed check is listed, so an integrator can tell a stranger from a blurred known face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.publish.config import LEVELS, AccessPolicyConfig

# Stable reason codes (documented in docs/mqtt.md).
UNKNOWN_PERSON = "unknown_person"
GROUP_NOT_ALLOWED = "group_not_allowed"
FAR_LEVEL_MISSING = "far_level_missing"
FAR_LEVEL_TOO_LOW = "far_level_too_low"
QUALITY_MISSING = "quality_missing"
QUALITY_TOO_LOW = "quality_too_low"
LIVENESS_MISSING = "liveness_missing"
LIVENESS_TOO_LOW = "liveness_too_low"
GALLERY_STALE = "gallery_stale"  # the person's group is mirrored from a hub the edge has not reached lately
# A camera that requires depth or infrared evidence (cameras[].depth.require, cameras[].ir.require) denies
# without it, naming why with the gate's own codes: depth_missing, depth_stale, depth_flat, depth_scale
# (agent/gates/depth.py); ir_missing, ir_stale, ir_dark, ir_no_face (agent/gates/ir.py). The event's
# depth_* fields carry either sensor's verdict (depth_sensor says which); no verdict at all is
# <sensor>_missing.


class Evidence(Protocol):
    """What the policy reads of an event (payloads.RecognitionEvent has it; payloads imports this module)."""

    @property
    def is_known(self) -> bool: ...

    @property
    def group_id(self) -> str | None: ...

    @property
    def far_level(self) -> int | None: ...

    @property
    def quality_level(self) -> str | None: ...

    @property
    def liveness_level(self) -> str | None: ...

    @property
    def gallery_stale(self) -> bool: ...

    @property
    def depth_required(self) -> bool: ...

    @property
    def depth_passed(self) -> bool | None: ...

    @property
    def depth_reasons(self) -> tuple[str, ...]: ...

    @property
    def depth_sensor(self) -> str: ...


@dataclass(frozen=True)
class AccessDecision:
    granted: bool
    reasons: tuple[str, ...]  # empty when granted


def _level_reasons(actual: str | None, required: str, missing: str, too_low: str) -> list[str]:
    if required == "NONE":
        return []
    if actual is None:
        return [missing]
    return [too_low] if LEVELS.index(actual) < LEVELS.index(required) else []


def decide(event: Evidence, policy: AccessPolicyConfig) -> AccessDecision:
    """Grant only when every check of `policy` passes on the evidence carried by `event`."""
    reasons: list[str] = []
    if not event.is_known:
        reasons.append(UNKNOWN_PERSON)
    elif policy.allowed_groups and event.group_id not in policy.allowed_groups:
        reasons.append(GROUP_NOT_ALLOWED)
    if event.is_known and event.gallery_stale:
        reasons.append(GALLERY_STALE)
    if event.depth_required and not event.depth_passed:  # fails closed: no verdict is no evidence
        reasons += list(event.depth_reasons) or [f"{event.depth_sensor}_missing"]
    if event.is_known and policy.min_far_level > 0:
        if event.far_level is None:
            reasons.append(FAR_LEVEL_MISSING)
        elif event.far_level < policy.min_far_level:
            reasons.append(FAR_LEVEL_TOO_LOW)
    reasons += _level_reasons(event.quality_level, policy.required_quality, QUALITY_MISSING, QUALITY_TOO_LOW)
    reasons += _level_reasons(
        event.liveness_level, policy.required_liveness, LIVENESS_MISSING, LIVENESS_TOO_LOW
    )
    return AccessDecision(granted=not reasons, reasons=tuple(reasons))
