"""The infrared gate's config slice (`cameras[].ir`) and reason codes; the check is agent/gates/ir.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IR_REASONS = ("ir_missing", "ir_stale", "ir_dark", "ir_no_face")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class IrGateConfig(BaseModel):
    """The infrared evidence of one camera (`cameras[].ir`): a near-infrared camera beside the colour one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="the IR camera: device index or path (a V4L2 infrared node such as /dev/video2), a "
        "video file or an image folder (recordings, tests)",
    )
    kind: Literal["auto", "device", "file", "folder"] = Field(
        "auto", description="source kind of the IR camera"
    )
    registration: tuple[float, float, float, float, float, float] = Field(
        IDENTITY,
        description="affine map a, b, c, d, e, f from a colour pixel (x, y) to the IR pixel showing the same "
        "point: (a x + b y + c, d x + e y + f), from a calibration of the pair; the default identity "
        "is for sensors already registered (one module with both). A wrong map fails closed (ir_no_face)",
    )
    require: bool = Field(
        True,
        description="grant access only with passed IR evidence (missing, stale, dark or faceless IR denies); "
        "false: measured and published, not required",
    )
    min_level: float = Field(
        40.0,
        ge=1,
        le=250,
        description="the face's median grey level in IR must reach this (0..255): a phone or tablet screen "
        "emits no near infrared and stays dark under the IR illuminator",
    )
    min_iou: float = Field(
        0.3, gt=0, le=1, description="a face detected in IR must overlap the colour face's box this much"
    )
    max_skew_s: float = Field(
        0.1, gt=0, le=2, description="IR and colour frames taken further apart than this are no evidence"
    )

    @model_validator(mode="after")
    def _invertible(self) -> IrGateConfig:
        a, b, _, d, e, _ = self.registration
        if abs(a * e - b * d) < 1e-6:
            raise ValueError("ir.registration must be an invertible affine map (a e - b d != 0)")
        return self
