"""Reading an LFW-format folder (images/<Name>/<Name>_NNNN.jpg, pairs file) and embedding every image through
the whole pipeline: raw image -> detect -> align -> embed."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.inference.engine import FaceEngine
from agent.types import Face

_PROGRESS_EVERY_S = 5.0  # a progress line on stderr at most this often (a full LFW pass takes minutes)


@dataclass(frozen=True)
class Dataset:
    root: Path
    paths: list[Path]
    identities: np.ndarray  # int label per path

    def lookup(self) -> dict[tuple[str, int], int]:
        """(person name, image number) -> index into `paths`, as LFW's pairs files name images."""
        return {(p.parent.name, int(p.stem.rsplit("_", 1)[1])): i for i, p in enumerate(self.paths)}


def load_dataset(root: Path) -> Dataset:
    paths = sorted((root / "images").glob("*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no LFW images under {root / 'images'}")
    names = sorted({p.parent.name for p in paths})
    ids = {n: i for i, n in enumerate(names)}
    return Dataset(root, paths, np.array([ids[p.parent.name] for p in paths]))


def read_pairs(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) dataset indices and (K,) bool same-person labels, from LFW's pairs format."""
    lookup = ds.lookup()
    idx, same = [], []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            idx.append((lookup[(parts[0], int(parts[1]))], lookup[(parts[0], int(parts[2]))]))
            same.append(True)
        elif len(parts) == 4:
            idx.append((lookup[(parts[0], int(parts[1]))], lookup[(parts[2], int(parts[3]))]))
            same.append(False)
    return np.array(idx), np.array(same)


def central_face(faces: list[Face], width: int, height: int) -> Face | None:
    """LFW images are centred on the labelled person: take the face nearest the centre."""
    if not faces:
        return None
    cx, cy = width / 2, height / 2
    return min(faces, key=lambda f: (f.box.center[0] - cx) ** 2 + (f.box.center[1] - cy) ** 2)


def embed_paths(
    engine: FaceEngine, paths: list[Path], retry_threshold: float = 0.25, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) embeddings (NaN rows where no face was found) and (N,) bool detected flags."""
    dim = engine.embedder.dim
    out = np.full((len(paths), dim), np.nan, np.float32)
    found = np.zeros(len(paths), bool)
    batch_chips, batch_rows = [], []
    started = last_note = time.monotonic()
    for i, path in enumerate(paths):
        img = engine.load(path.read_bytes())
        faces = engine.detector.detect(img.pixels)
        if not faces:  # a second, lower-threshold look before giving up on an image
            faces = engine.detector.detect(img.pixels, score_threshold=retry_threshold)
        face = central_face(faces, img.width, img.height)
        if face is not None:
            batch_chips.extend(engine.embedder.chips(img.pixels, [face]))
            batch_rows.append(i)
            found[i] = True
        if len(batch_chips) >= 32 or (i == len(paths) - 1 and batch_chips):
            out[batch_rows] = engine.embedder.embed_chips(batch_chips)
            batch_chips, batch_rows = [], []
        now = time.monotonic()
        if progress and (i == 0 or now - last_note >= _PROGRESS_EVERY_S or i == len(paths) - 1):
            last_note = now
            rate = (i + 1) / max(now - started, 1e-9)
            left = (len(paths) - i - 1) / rate
            note = f"  {i + 1}/{len(paths)} images, {rate:.0f}/s, {left:.0f} s left"
            print(note, file=sys.stderr, flush=True)
    return out, found
