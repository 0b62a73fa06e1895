"""The face engine: detect, align and embed, on the configured runtime. One instance is shared by the camera
loop and the HTTP API; every method is thread-safe."""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from agent.capture.imageio import decode_bytes, from_array
from agent.config import EngineConfig
from agent.errors import InputError
from agent.inference.align import mesh_transform, warp
from agent.inference.detector import BlazeFaceDetector
from agent.inference.embedder import Embedder
from agent.inference.manifest import Manifest, ModelInfo
from agent.inference.mesh import open_face_mesh
from agent.inference.runtime import open_session
from agent.types import Box, Face, FaceEmbedding, Image

log = logging.getLogger(__name__)

ImageInput = bytes | bytearray | memoryview | np.ndarray | Image


def uses_mesh(manifest: Manifest, config: EngineConfig) -> bool:
    """Whether the embedder aligns on face-mesh points: `landmarks` mesh, or auto where the manifest has a
    calibrated mesh space for this model, precision, runtime and flip."""
    emb = config.embedder
    if emb.landmarks != "auto":
        return emb.landmarks == "mesh"
    return manifest.has_space(emb.model, emb.precision, config.runtime.kind, emb.flip, mesh=True)


def space_info(manifest: Manifest, config: EngineConfig, verify: bool = True) -> ModelInfo:
    """The embedder's variant as this config runs it: precision, runtime, flip and landmarks."""
    emb = config.embedder
    mesh = uses_mesh(manifest, config)
    return manifest.info(emb.model, emb.precision, config.runtime.kind, verify, flip=emb.flip, mesh=mesh)


class FaceEngine:
    def __init__(self, config: EngineConfig, manifest: Manifest | None = None) -> None:
        self.config = config
        manifest = manifest or Manifest(config.models_dir)
        runtime = config.runtime.kind
        verify = config.verify_checksums
        det_info = manifest.info(config.detector.model, "fp32", runtime, verify)
        emb_info = space_info(manifest, config, verify)
        mesh = emb_info.mesh
        if emb_info.kind != "embedder":
            raise InputError(f"model {config.embedder.model!r} is a {emb_info.kind}, not an embedder")
        t0 = time.perf_counter()
        self.detector = BlazeFaceDetector(
            det_info, open_session(det_info.files, config.runtime), config.detector
        )
        self.mesh = open_face_mesh(config, manifest=manifest) if mesh else None
        self.embedder = Embedder(
            emb_info, open_session(emb_info.files, config.runtime), config.embedder.max_batch, self.mesh
        )
        self.thresholds = emb_info.thresholds  # of the space it runs: flip has its own
        self.far_curve = emb_info.far_curve  # cosine at pair FAR 1e-2 .. 1e-7, for open-set thresholds
        self.person_curves = emb_info.person_curves  # the same per number of faces averaged (mean rule)
        self._warm_up()
        log.info(
            "engine ready: %s + %s on %s in %.1fs",
            det_info.model_id,
            emb_info.model_id,
            runtime,
            time.perf_counter() - t0,
        )

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def space_accepts(self) -> dict[str, str]:
        """Older model ids of the very file this engine runs (manifest legacy_spaces): the same space."""
        return self.embedder.info.space_accepts

    @property
    def space_hints(self) -> dict[str, str]:
        """Each variant of this model -> the precision and runtime that compute it."""
        return self.embedder.info.space_hints

    def embed_thumbnails(self, thumbnails: list[bytes]) -> np.ndarray:
        """(N, dim) embeddings of stored aligned-chip thumbnails (JPEG or PNG), e.g. to re-embed a gallery
        enrolled under another variant of this model (or with the other flip setting): the chips were cut by
        this model's alignment. Flipped here as everywhere when the engine runs flip. In a mesh space each
        chip is aligned again on its own face-mesh points (a chip cut from the detector's keypoints comes out
        as the mesh would have cut it; a mesh chip nearly unchanged)."""
        chips = []
        for data in thumbnails:
            chip = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if chip is None:
                raise InputError("a stored thumbnail is not a readable image", code="invalid_thumbnail")
            if chip.shape[:2] != (self.embedder.size, self.embedder.size):
                raise InputError(
                    f"a stored thumbnail is {chip.shape[1]}x{chip.shape[0]}, not this model's "
                    f"{self.embedder.size}x{self.embedder.size} aligned chip",
                    code="invalid_thumbnail",
                )
            chips.append(self._realigned(chip) if self.mesh is not None else chip)
        return self.embedder.embed_chips(chips)

    def _realigned(self, chip: np.ndarray) -> np.ndarray:
        """A stored chip aligned again on mesh points: the mesh crop comes from where the detector's box and
        keypoints land in such a chip on average (`chip_face` of the model's `align_mesh`)."""
        spec = self.embedder.align_spec
        size = self.embedder.size
        box = np.asarray(spec["chip_face"]["box"], np.float64) * size
        kps = np.asarray(spec["chip_face"]["keypoints"], np.float64) * size
        # The mesh crop (1.5x the box) reaches beyond the chip: black there, as at a photo's edge.
        pad = size // 2
        framed = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
        face = Face(Box(*(float(v) + pad for v in box)), 1.0, (kps + pad).astype(np.float32))
        points = self.mesh.landmarks(framed, face).points
        return warp(framed, mesh_transform(points, spec), size)

    def embed_foreign_chips(self, thumbnails: list[bytes]) -> list[np.ndarray | None]:
        """Embeddings of aligned chips cut by *another* model's alignment (a hub running FaceNet, this device
        dlib): each chip is padded, the face found and aligned again the way this model wants. None where
        no face is found in a chip."""
        out: list[np.ndarray | None] = []
        for data in thumbnails:
            chip = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if chip is None:
                out.append(None)
                continue
            pad = max(chip.shape[:2]) // 2  # the detector needs context around a tightly cropped face
            framed = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            faces = self.analyze(framed, max_faces=1)
            out.append(faces[0].vector if faces else None)
        return out

    def _warm_up(self) -> None:
        # First inferences pay for kernel selection and memory planning; do it before READY.
        blank = np.full((self.detector.size * 2, self.detector.size * 2, 3), 127, np.uint8)
        self.detector.detect(blank)
        chip = np.full((self.embedder.size, self.embedder.size, 3), 127, np.uint8)
        self.embedder.embed_chips([self._realigned(chip) if self.mesh is not None else chip])

    def load(self, image: ImageInput) -> Image:
        if isinstance(image, Image):
            return image
        if isinstance(image, np.ndarray):
            return from_array(image, self.config.images)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_bytes(bytes(image), self.config.images)
        raise InputError(f"unsupported image input type {type(image).__name__}")

    def detect(self, image: ImageInput, max_faces: int | None = None) -> list[Face]:
        """Faces, largest first."""
        img = self.load(image)
        faces = sorted(self.detector.detect(img.pixels), key=lambda f: -(f.box.width * f.box.height))
        return faces[:max_faces] if max_faces else faces

    def embed(self, image: ImageInput, faces: list[Face], keep_chips: bool = False) -> list[FaceEmbedding]:
        img = self.load(image)
        chips, meshes = self.embedder.chips_and_meshes(img.pixels, faces)
        vectors = self.embedder.embed_chips(chips)
        return [
            FaceEmbedding(f, v, self.model_id, c if keep_chips else None, m)
            for f, v, c, m in zip(faces, vectors, chips, meshes, strict=True)
        ]

    def analyze(
        self, image: ImageInput, max_faces: int | None = None, keep_chips: bool = False
    ) -> list[FaceEmbedding]:
        img = self.load(image)
        return self.embed(img, self.detect(img, max_faces), keep_chips)
