"""Input normalisation shared by the detector and the embedders: the manifest's `(x - mean) * scale`."""

from __future__ import annotations

import numpy as np


def blob_params(mean: np.ndarray, scale: np.ndarray) -> tuple[tuple[float, ...], float] | None:
    """(mean, scale) as cv2.dnn.blobFromImage(s) takes them when one scale serves every channel (one C call
    for colour swap, normalisation and NCHW layout), else None: a per-channel scale goes through numpy."""
    if not np.all(scale == scale[0]):
        return None
    return tuple(float(m) for m in mean), float(scale[0])
