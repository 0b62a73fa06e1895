"""The model manifest (models/manifest.json): which files exist, their checksums and every model fact.

Model wrappers take their preprocessing, decoder settings and thresholds from here, never from graph shapes.
A file whose sha256 differs from the manifest is refused at load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ModelError

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"
RUNTIMES = ("openvino", "onnxruntime")
FLIP = "+flip"  # model id and thresholds-key suffix of the flip test-time augmentation: a space of its own
MESH = "+mesh"  # ... of the alignment on face-mesh points (the model's `align_mesh`): a space of its own


@dataclass(frozen=True)
class ModelFiles:
    """The file a runtime loads (`model`), its separate weights (OpenVINO IR .bin) and the ONNX file."""

    model: Path
    weights: Path | None = None
    onnx: Path | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    variant: str
    facts: dict[str, Any] = field(repr=False)
    files: ModelFiles = field(repr=False)
    thresholds: dict[str, float] = field(default_factory=dict)
    space: str = ""  # the embedding space of the file this runtime loads; the variant name when not set
    space_accepts: dict[str, str] = field(default_factory=dict)  # other model ids measured as this space
    space_hints: dict[str, str] = field(default_factory=dict)  # other model ids -> how to run them
    flip: bool = False  # embed each chip and its mirror image, and average (test-time augmentation)
    far_curve: dict[str, list[float]] = field(default_factory=dict)  # {"far": [...], "cosine": [...]}
    person_curves: dict[str, dict] = field(default_factory=dict)  # k -> far_curve of the mean of k faces
    mesh: bool = False  # chips aligned on face-mesh points (`align_mesh`), not on the detector's keypoints

    @property
    def model_id(self) -> str:
        """The exact variant: model, precision and file (`dlib-resnet-v1/int8-qdq.1a2b3c4d`, the file's stem
        and sha256 prefix), `+flip` when the mirror image is averaged in, `+mesh` when the chip is aligned on
        face-mesh points. Two files are two embedding spaces, with their own gallery indexes; so are one file
        with and without flip, or aligned two ways."""
        return f"{self.name}/{self.space or self.variant}{suffix(self.flip, self.mesh)}"

    @property
    def input(self) -> dict[str, Any]:
        return self.facts["input"]

    @property
    def output(self) -> dict[str, Any]:
        return self.facts["output"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Manifest:
    def __init__(self, models_dir: Path | None = None) -> None:
        self.dir = Path(models_dir or DEFAULT_MODELS_DIR)
        path = self.dir / "manifest.json"
        try:
            self._data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"model manifest not found at {path}; run scripts/build_models.py") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n, m in self._data["models"].items() if kind is None or m.get("kind") == kind]

    def variants(self, name: str) -> list[str]:
        return list(self._entry(name).get("variants", {}))

    def spaces(self, name: str) -> dict[str, str]:
        """Every embedding space of a model, current and retired: model id -> how to run it."""
        entry = self._entry(name)
        return self._hints(name, entry)

    def has_mesh_alignment(self, name: str) -> bool:
        return "align_mesh" in self._entry(name)

    def has_space(self, name: str, variant: str, runtime: str, flip: bool, mesh: bool) -> bool:
        """Whether the manifest has calibrated thresholds for this space (and, for mesh, the alignment)."""
        entry = self._entry(name)
        if mesh and "align_mesh" not in entry:
            return False
        var = entry.get("variants", {}).get(variant, {})
        return bool(
            var.get("thresholds", {}).get(thresholds_key(runtime, flip, mesh), {}).get("cosine_at_far")
        )

    def output_dim(self, name: str) -> int | None:
        dim = self._entry(name).get("output", {}).get("dim")
        return None if dim is None else int(dim)

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self._data["models"][name]
        except KeyError:
            raise ModelError(
                f"model {name!r} is not in the manifest; known: {', '.join(self.names())}"
            ) from None

    def info(
        self,
        name: str,
        variant: str,
        runtime: str,
        verify: bool = True,
        flip: bool = False,
        mesh: bool = False,
    ) -> ModelInfo:
        """A variant as `runtime` loads it; `flip` selects its flip-augmented space, `mesh` the space aligned
        on face-mesh points (each its own id and thresholds)."""
        entry = self._entry(name)
        if mesh and "align_mesh" not in entry:
            raise ModelError(f"model {name!r} has no face-mesh alignment in the manifest (align_mesh)")
        variants = entry.get("variants", {})
        if variant not in variants:
            raise ModelError(f"model {name!r} has no {variant!r} variant; available: {', '.join(variants)}")
        var = variants[variant]
        files = self._files(name, variant, var["files"], runtime, verify)
        calibration = var.get("thresholds", {}).get(thresholds_key(runtime, flip, mesh), {})
        facts = {k: v for k, v in entry.items() if k not in ("variants", "legacy_spaces", "align_mesh")}
        if mesh:
            facts["align"] = entry["align_mesh"]
        rec = _record_for(var["files"], runtime)  # the record _files resolved
        space = _space(variant, rec)
        legacy = entry.get("legacy_spaces", {})
        return ModelInfo(
            name,
            entry["kind"],
            variant,
            facts,
            files,
            dict(calibration.get("cosine_at_far", {})),
            space,
            {} if flip or mesh else _accepted(name, legacy, rec),  # older agents: plain ids only
            self._hints(name, entry),
            flip,
            dict(calibration.get("far_curve", {})),
            dict(calibration.get("person_curves", {})),
            mesh,
        )

    @staticmethod
    def _hints(name: str, entry: dict[str, Any]) -> dict[str, str]:
        """How to run each space of this model: the precision, flip, landmarks and runtime that compute it."""
        legacy = entry.get("legacy_spaces", {})
        meshes = (False, True) if "align_mesh" in entry else (False,)
        hints: dict[str, str] = {}
        for variant, var in entry.get("variants", {}).items():
            for runtime in RUNTIMES:
                rec = _record_for(var["files"], runtime)
                if rec is None:
                    continue
                for flip in (False, True):
                    for mesh in meshes:
                        model_id = f"{name}/{_space(variant, rec)}{suffix(flip, mesh)}"
                        hint = f"run with embedder.precision {variant}, embedder.flip {str(flip).lower()}, "
                        hint += f"embedder.landmarks {'mesh' if mesh else 'detector'} on runtime {runtime}"
                        hints[model_id] = f"{hints[model_id]} or {hint}" if model_id in hints else hint
        for space, facts in legacy.items():  # ids of older agents
            hint = (
                facts["retired"] if "retired" in facts else f"run the file with sha256 {facts.get('sha256')}"
            )
            hints.setdefault(f"{name}/{space}", hint)
        return hints

    def _resolve(self, rec: dict[str, Any], verify: bool) -> Path:
        path = self.dir / rec["path"]
        if not path.exists():
            raise ModelError(f"model file {path} is missing; run scripts/build_models.py or restore models/")
        if verify:
            digest = _sha256(path)
            if digest != rec["sha256"]:
                raise ModelError(
                    f"model file {path} has sha256 {digest[:16]}..., the manifest expects "
                    f"{rec['sha256'][:16]}...: the file is corrupt or was replaced; restore it "
                    "from the release"
                )
        return path

    def _files(self, name: str, variant: str, recs: dict, runtime: str, verify: bool) -> ModelFiles:
        rec = _record_for(recs, runtime)
        if rec is None:
            raise ModelError(f"{name}/{variant}: no file usable by {runtime} in the manifest")
        onnx = self._resolve(recs["onnx"], verify) if "onnx" in recs else None
        if "weights" in rec:  # an OpenVINO IR: .xml plus .bin
            xml = self._resolve(rec, verify)
            return ModelFiles(model=xml, weights=self._resolve(rec["weights"], verify), onnx=onnx)
        return ModelFiles(model=onnx, onnx=onnx)


def suffix(flip: bool, mesh: bool = False) -> str:
    """What a space's id and thresholds key add to the file's: `+flip`, then `+mesh`."""
    return f"{FLIP if flip else ''}{MESH if mesh else ''}"


def thresholds_key(runtime: str, flip: bool, mesh: bool = False) -> str:
    """Where a variant's `thresholds` keep one space's numbers: per runtime, `+flip` for the flip space,
    `+mesh` for the space aligned on face-mesh points."""
    return f"{runtime}{suffix(flip, mesh)}"


def _record_for(recs: dict[str, Any], runtime: str) -> dict[str, Any] | None:
    """The file record a runtime loads: OpenVINO prefers its own IR, both fall back to the ONNX file."""
    if runtime == "openvino" and "openvino" in recs:
        return recs["openvino"]
    return recs.get("onnx")


def _space(variant: str, rec: dict[str, Any] | None) -> str:
    return str(rec.get("space", variant)) if rec else variant


def _accepted(name: str, legacy: dict[str, Any], rec: dict[str, Any] | None) -> dict[str, str]:
    """Older ids of the very file this runtime loads (same sha256): the same space under another name."""
    if rec is None:
        return {}
    return {
        f"{name}/{old}": f"the same file (sha256 {rec['sha256'][:12]}...) under its pre-0.2 name"
        for old, facts in legacy.items()
        if facts.get("sha256") == rec["sha256"]
    }
