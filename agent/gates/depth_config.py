"""The depth gate's config slice (`cameras[].depth`) and reason codes; the check is agent/gates/depth.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEPTH_REASONS = ("depth_missing", "depth_stale", "depth_flat", "depth_scale")


class DepthGateConfig(BaseModel):
    """The depth evidence of one camera (`cameras[].depth`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    require: bool = Field(
        True,
        description="grant access only with passed depth evidence (missing, stale or flat depth denies); "
        "false: measured and published, not required",
    )
    min_relief_mm: float = Field(
        7.0, ge=2, le=40, description="the nose must stand this far out of the fitted face surface"
    )
    eye_mm: tuple[float, float] = Field(
        (45.0, 85.0), description="plausible physical distance of the eye centres (adults: 54-74 mm)"
    )
    max_skew_s: float = Field(
        0.05, gt=0, le=1, description="depth and colour frames taken further apart than this are no evidence"
    )
    min_valid: float = Field(
        0.5, gt=0, le=1, description="share of the ring's pixels that must have a depth value"
    )
    max_spread_mm: float = Field(
        150.0, ge=50, le=500, description="samples farther than this from the nose depth are not the face"
    )
    range_mm: tuple[float, float] = Field((150.0, 3000.0), description="distances the check accepts")

    @model_validator(mode="after")
    def _ranges(self) -> DepthGateConfig:
        if not (0 < self.eye_mm[0] < self.eye_mm[1] and 0 < self.range_mm[0] < self.range_mm[1]):
            raise ValueError("eye_mm and range_mm must be (low, high) with 0 < low < high")
        return self
