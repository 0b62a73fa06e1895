"""Thresholds at FAR 1e-3..1e-6 (and a finer FAR curve, 1e-2..1e-7) from the impostor pairs of an LFW-format
set, and the full evaluation report (pair accuracy, TAR at FAR, ROC) for one embedding space: a model variant
on one runtime, with or without flip test-time augmentation."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig
from agent.evaluation.lfw import embed_paths, load_dataset, read_pairs
from agent.evaluation.metrics import (
    FARS,
    all_pair_scores,
    far_key,
    kfold_accuracy,
    pair_scores,
    roc_curve,
    tar_at,
    threshold_at_far,
)
from agent.inference.engine import FaceEngine

# The far_curve grid: half decades from 1e-2 to 1e-7, four significant digits (1e-2, 3.162e-3, 1e-3, ...).
# Open-set thresholds come from it: a probe searched against N faces is falsely identified with probability
# FPIR = 1 - (1 - FAR)^N, so a target FPIR needs the threshold at FAR = 1 - (1 - FPIR)^(1/N).
FAR_CURVE = tuple(float(f"{10 ** (-e / 2):.4g}") for e in range(4, 15))
_DECIMALS = 5  # thresholds in the manifest


@dataclass
class EvalResult:
    model_id: str
    runtime: str
    detector: str
    images: int
    missed: int
    pair_accuracy: float
    pair_accuracy_std: float
    pair_threshold: float
    genuine_pairs: int
    impostor_pairs: int
    thresholds: dict[str, float]
    tar: dict[str, float]
    seconds: float
    roc: dict[str, list[float]] = field(default_factory=dict, repr=False)
    far_curve: dict[str, list[float]] = field(default_factory=dict, repr=False)  # {"far": [], "cosine": []}


def make_engine(
    models_dir: Path | None,
    model: str,
    variant: str,
    runtime: str,
    detector: str = "blazeface-full",
    flip: bool = False,
    landmarks: str = "auto",
) -> FaceEngine:
    """An engine for one space. `flip` and `landmarks` (engine.embedder.landmarks: auto, mesh, detector)
    are explicit: an evaluation names its space."""
    rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
    cfg = EngineConfig(
        runtime=rt,
        detector={"model": detector},
        embedder=EmbedderConfig(model=model, precision=variant, flip=flip, landmarks=landmarks),
        models_dir=models_dir,
    )
    return FaceEngine(cfg)


def _cache_key(engine: FaceEngine, root: Path) -> str:
    files = engine.embedder.info.files
    h = hashlib.sha256()
    for part in (
        str(files.model),
        str(files.model.stat().st_mtime_ns),
        engine.config.runtime.kind,
        engine.detector.info.name,
        json.dumps(engine.embedder.align_spec, sort_keys=True),
        str(root),
        # Flip is another space; plain keys stay as they were, so caches made before flip existed still hit.
        *(["flip"] if engine.embedder.flip else []),
    ):
        h.update(part.encode())
    return h.hexdigest()[:16]


def dataset_embeddings(
    engine: FaceEngine, root: Path, cache_dir: Path | None = None, progress: bool = False
) -> tuple[object, np.ndarray, np.ndarray]:
    ds = load_dataset(root)
    cache = cache_dir / f"emb-{_cache_key(engine, root)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        data = np.load(cache)
        return ds, data["emb"], data["found"]
    emb, found = embed_paths(engine, ds.paths, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, emb=emb, found=found)
    return ds, emb, found


def evaluate(
    engine: FaceEngine,
    root: Path,
    cache_dir: Path | None = None,
    progress: bool = False,
    embeddings: tuple | None = None,
) -> EvalResult:
    """`embeddings`: what `dataset_embeddings` returned, when the caller needs them too (no second pass)."""
    t0 = time.perf_counter()
    ds, emb, found = embeddings or dataset_embeddings(engine, root, cache_dir, progress)
    pairs, same = read_pairs(root / "pairsDevTrain.txt", ds)
    acc, std, thr = kfold_accuracy(pair_scores(emb, pairs), same)
    genuine, impostor = all_pair_scores(emb, ds.identities)
    thresholds = {far_key(far): _ceil(threshold_at_far(impostor, far)) for far in FARS}
    curve = [_ceil(threshold_at_far(impostor, far)) for far in FAR_CURVE]
    fars, tars = roc_curve(genuine, impostor)
    return EvalResult(
        model_id=engine.model_id,
        runtime=engine.config.runtime.kind,
        detector=engine.detector.info.name,
        images=len(ds.paths),
        missed=int((~found).sum()),
        pair_accuracy=acc,
        pair_accuracy_std=std,
        pair_threshold=thr,
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
        thresholds=thresholds,
        tar={k: tar_at(genuine, v) for k, v in thresholds.items()},
        seconds=time.perf_counter() - t0,
        roc={"far": fars.tolist(), "tar": tars.tolist()},
        far_curve={"far": list(FAR_CURVE), "cosine": curve},
    )


def _landmarks(mesh: bool) -> str:
    return "mesh" if mesh else "detector"


def _ceil(threshold: float) -> float:
    """Rounded up, never to the nearest: a threshold rounded down would accept more impostors than its FAR."""
    return round(math.ceil(threshold * 10**_DECIMALS) / 10**_DECIMALS, _DECIMALS)


DEFAULT_CACHE = Path.home() / ".cache" / "face-agent" / "eval"


def calibrate_thresholds(
    models_dir: Path,
    model: str,
    variant: str,
    runtime: str,
    root: Path,
    cache_dir: Path | None = DEFAULT_CACHE,
    flip: bool = False,
    mesh: bool = False,
) -> dict:
    """Manifest entry of one space: cosine thresholds at each FAR and the far_curve, with how they were
    measured. Embeddings are cached (keyed by model file, runtime, detector, alignment and flip) so
    `face-agent eval` reuses them."""
    engine = make_engine(models_dir, model, variant, runtime, flip=flip, landmarks=_landmarks(mesh))
    res = evaluate(engine, root, cache_dir, progress=True)
    print(
        f"  {res.model_id} on {res.runtime}: accuracy {res.pair_accuracy * 100:.2f}%  "
        f"thresholds {res.thresholds}  TAR {res.tar}"
    )
    return {
        "cosine_at_far": res.thresholds,
        "tar_at_far": {k: round(v, 4) for k, v in res.tar.items()},
        "far_curve": res.far_curve,
        "source": f"{root.name}: {res.impostor_pairs} impostor pairs, {res.genuine_pairs} genuine pairs",
        "pair_accuracy": round(res.pair_accuracy, 4),
    }


# The mean rule's curves (agent/gallery/thresholds.PersonCurves): k faces per template, up to this many
# disjoint templates per identity, and a curve point only where at least MIN_TAIL impostor scores lie above
# it (fewer would make the strict end noise).
PERSON_KS = (2, 3, 4, 5)
PER_IDENTITY = 3
MIN_TAIL = 20


def person_far_curves(emb: np.ndarray, labels: np.ndarray, ks=PERSON_KS) -> dict[str, dict]:
    """For each k, the pair FAR curve of "cosine between one face and the normalised mean of k faces of
    another person": every identity with k or more faces gives up to PER_IDENTITY disjoint templates (its
    faces in dataset order), scored against every face of every other identity."""
    ok = ~np.isnan(emb[:, 0])
    e, lab = emb[ok].astype(np.float32), labels[ok]
    order = np.argsort(lab, kind="stable")
    bounds = np.flatnonzero(np.diff(lab[order])) + 1
    groups = np.split(order, bounds)
    out: dict[str, dict] = {}
    for k in ks:
        templates, owners = [], []
        for rows in groups:
            for part in range(min(len(rows) // k, PER_IDENTITY)):
                v = e[rows[part * k : (part + 1) * k]].mean(axis=0)
                templates.append(v / np.linalg.norm(v))
                owners.append(lab[rows[0]])
        if not templates:
            continue
        t, own = np.stack(templates), np.asarray(owners)
        imp = np.concatenate(
            [
                (e[i : i + 2048] @ t.T)[lab[i : i + 2048, None] != own[None, :]]
                for i in range(0, len(e), 2048)
            ]
        )
        fars = [f for f in FAR_CURVE if f * len(imp) >= MIN_TAIL]
        out[str(k)] = {
            "far": fars,
            "cosine": [_ceil(threshold_at_far(imp, f)) for f in fars],
            "templates": len(t),
            "impostor_pairs": len(imp),
        }
    return out


def calibrate_person_curves(
    models_dir: Path,
    model: str,
    variant: str,
    runtime: str,
    root: Path,
    cache_dir: Path | None = DEFAULT_CACHE,
    flip: bool = False,
    mesh: bool = False,
) -> dict:
    """The manifest `person_curves` of one space (embeddings cached as in calibrate_thresholds)."""
    engine = make_engine(models_dir, model, variant, runtime, flip=flip, landmarks=_landmarks(mesh))
    ds, emb, _ = dataset_embeddings(engine, root, cache_dir, progress=True)
    curves = person_far_curves(emb, ds.identities)
    for k, c in curves.items():
        print(f"  {engine.model_id} k={k}: {c['templates']} templates, {c['impostor_pairs']} impostor pairs,"
              f" down to FAR {c['far'][-1]:g}: {dict(zip(c['far'], c['cosine'], strict=True))}")
    return curves


def result_dict(res: EvalResult) -> dict:
    d = asdict(res)
    d.pop("roc")
    return d
