"""Embedding models: chip preprocessing from the manifest, batched inference, L2-normalised output.

With flip (ModelInfo.flip, from engine.embedder.flip) each chip is embedded together with its mirror image in
the same inference call, and the embedding is the normalised sum of the two normalised vectors: measured on
lfw-devtrain, more genuine pairs pass at the same FAR (docs/models.md). It is another embedding space (model
id `+flip`, its own thresholds), so a gallery is never searched across the two.

With mesh alignment (ModelInfo.mesh) the chip is cut from face-mesh points instead of the detector's
keypoints (the mesh model is passed in as `landmarks`): another space too (`+mesh`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from agent.errors import ModelError
from agent.inference.align import align, mesh_transform, warp
from agent.inference.blob import blob_params
from agent.inference.manifest import ModelInfo
from agent.inference.runtime import Session
from agent.types import Face

if TYPE_CHECKING:
    from agent.inference.mesh import FaceMesh, Mesh


class Embedder:
    def __init__(
        self, info: ModelInfo, session: Session, max_batch: int, landmarks: FaceMesh | None = None
    ) -> None:
        if info.mesh and landmarks is None:
            raise ModelError(f"{info.model_id} aligns on face-mesh points: it needs the face mesh model")
        self.info = info
        self._landmarks = landmarks if info.mesh else None
        self._session = session
        self._max_batch = max_batch
        self.size = int(info.input["size"][0])
        self.dim = int(info.output["dim"])
        self.align_spec = info.facts["align"]
        self._mean = np.array(info.input["mean"], np.float32)
        self._scale = np.array(info.input["scale"], np.float32)
        self._blob = blob_params(self._mean, self._scale)  # once: preprocess runs for every face
        self._rgb = info.input["colour"] == "RGB"
        self._nchw = info.input["layout"] == "NCHW"
        self._output = session.output_names[0]
        self.flip = info.flip
        # Mirroring the input tensor along its width axis equals preprocessing the mirrored chip (every step
        # is per pixel), so the chips are preprocessed once.
        self._width_axis = 3 if self._nchw else 2

    @property
    def model_id(self) -> str:
        return self.info.model_id

    def chips(self, bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        return self.chips_and_meshes(bgr, faces)[0]

    def chips_and_meshes(
        self, bgr: np.ndarray, faces: list[Face]
    ) -> tuple[list[np.ndarray], list[Mesh | None]]:
        """The aligned chips, and per face the mesh they were aligned on (None with detector keypoints)."""
        if self._landmarks is None:
            return [align(bgr, f, self.align_spec) for f in faces], [None] * len(faces)
        meshes = [self._landmarks.landmarks(bgr, f) for f in faces]
        chips = [warp(bgr, mesh_transform(m.points, self.align_spec), self.size) for m in meshes]
        return chips, list(meshes)

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 L2-normalised embeddings of aligned BGR chips."""
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        out = [self._run(chips[i : i + self._max_batch]) for i in range(0, len(chips), self._max_batch)]
        return np.concatenate(out)

    def preprocess(self, chips: list[np.ndarray]) -> np.ndarray:
        """Aligned BGR uint8 chips -> the model's input tensor (colour order, normalisation, layout)."""
        if self._blob is not None:
            # One C call for colour swap, (x - mean) * scale and the NCHW layout: 0.13 ms for a 160x160 NHWC
            # chip, where numpy took 0.33 ms (a tenth of FaceNet INT8's inference time).
            mean, scale = self._blob
            x = cv2.dnn.blobFromImages(chips, scale, None, mean, self._rgb)
            return x if self._nchw else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        x = np.stack(chips).astype(np.float32)
        if self._rgb:
            x = x[..., ::-1]
        x = (x - self._mean) * self._scale
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self._nchw else x)

    def _run(self, chips: list[np.ndarray]) -> np.ndarray:
        x = self.preprocess(chips)
        if self.flip:  # one call for the chips and their mirror images: half the per-call overhead
            x = np.concatenate([x, np.flip(x, axis=self._width_axis)])
        y = self._session.run(x)[self._output].reshape(len(x), -1).astype(np.float32)
        if y.shape[1] != self.dim:
            raise ModelError(f"{self.model_id}: output has {y.shape[1]} values, manifest says {self.dim}")
        y = self._normalised(y)
        return self._normalised(y[: len(chips)] + y[len(chips) :]) if self.flip else y

    def _normalised(self, y: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        if not np.all(np.isfinite(y)) or np.any(norms < 1e-6):
            # Never hand zeros or NaN on as an identity: a broken model or device must be loud.
            raise ModelError(
                f"{self.model_id}: produced a non-finite or zero embedding on "
                f"{self._session.runtime}/{self._session.device}"
            )
        return y / norms
