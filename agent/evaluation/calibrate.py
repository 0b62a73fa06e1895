"""Thresholds at FAR 1e-3..1e-6 from the impostor pairs of an LFW-format set, and the full evaluation report
(pair accuracy, TAR at FAR, ROC) for one model variant on one runtime."""

from __future__ import annotations

import hashlib
import json
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


def make_engine(
    models_dir: Path | None, model: str, variant: str, runtime: str, detector: str = "blazeface-full"
) -> FaceEngine:
    rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
    cfg = EngineConfig(
        runtime=rt,
        detector={"model": detector},
        embedder=EmbedderConfig(model=model, precision=variant),
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
    engine: FaceEngine, root: Path, cache_dir: Path | None = None, progress: bool = False
) -> EvalResult:
    t0 = time.perf_counter()
    ds, emb, found = dataset_embeddings(engine, root, cache_dir, progress)
    pairs, same = read_pairs(root / "pairsDevTrain.txt", ds)
    acc, std, thr = kfold_accuracy(pair_scores(emb, pairs), same)
    genuine, impostor = all_pair_scores(emb, ds.identities)
    thresholds = {far_key(far): round(threshold_at_far(impostor, far), 5) for far in FARS}
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
    )


DEFAULT_CACHE = Path.home() / ".cache" / "face-agent" / "eval"


def calibrate_thresholds(
    models_dir: Path,
    model: str,
    variant: str,
    runtime: str,
    root: Path,
    cache_dir: Path | None = DEFAULT_CACHE,
) -> dict:
    """Manifest entry: cosine thresholds at each FAR, with how they were measured. Embeddings are cached
    (keyed by model file, runtime, detector and alignment) so `face-agent eval` reuses them."""
    engine = make_engine(models_dir, model, variant, runtime)
    res = evaluate(engine, root, cache_dir, progress=True)
    print(f"  accuracy {res.pair_accuracy * 100:.2f}%  thresholds {res.thresholds}  TAR {res.tar}")
    return {
        "cosine_at_far": res.thresholds,
        "tar_at_far": {k: round(v, 4) for k, v in res.tar.items()},
        "source": f"{root.name}: {res.impostor_pairs} impostor pairs, {res.genuine_pairs} genuine pairs",
        "pair_accuracy": round(res.pair_accuracy, 4),
    }


def result_dict(res: EvalResult) -> dict:
    d = asdict(res)
    d.pop("roc")
    return d
