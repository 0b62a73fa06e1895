"""Gates between detection and recognition: quality (this package's `quality` module) and liveness.

Owns the (score, reasons) verdicts on one face or track; imports inference (pose, face mesh) and ops only.
"""

from agent.gates.pose import FACE_MODEL_3D, Pose, estimate_pose
from agent.gates.quality import (
    LEVELS,
    QUALITY_LEVELS,
    REASONS,
    QualityMeasures,
    QualityReport,
    QualityThresholds,
    blur_to_score,
    evaluate_quality,
    is_valid_posture,
    jd_blur_score,
    measure_quality,
    posture,
)

__all__ = [
    "FACE_MODEL_3D",
    "LEVELS",
    "QUALITY_LEVELS",
    "REASONS",
    "Pose",
    "QualityMeasures",
    "QualityReport",
    "QualityThresholds",
    "blur_to_score",
    "estimate_pose",
    "evaluate_quality",
    "is_valid_posture",
    "jd_blur_score",
    "measure_quality",
    "posture",
]
