"""One embedding space per model variant: a gallery enrolled under another variant of the running model is
re-embedded from its thumbnails, accepted where the manifest knows the file by an older id, or refused.

A variant is a model, a precision and the file that computes it: `dlib-resnet-v1/int8-qdq.<sha256 prefix>`.
Two quantizations of one network are two spaces (agent 0.1's OpenVINO and onnxruntime INT8 files of the dlib
ResNet disagreed by up to 0.06 in cosine on the same face, and accepted 80.5% against 70.5% of genuine pairs
at one threshold). Searching faces of one space with probes of another silently costs genuine matches, so
this runs before the gallery opens its indexes, when every entry point (run, serve, enroll) knows its engine.

This layer knows nothing of models: the caller passes the running space, the spaces the manifest accepts as
equal to it, and a function that embeds aligned-chip thumbnails with the running engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from agent.errors import ConfigError, InputError
from agent.gallery.config import GalleryConfig
from agent.gallery.gallery import Gallery
from agent.gallery.index import index_paths
from agent.gallery.store import GalleryStore

log = logging.getLogger(__name__)

EmbedThumbnails = Callable[[list[bytes]], np.ndarray]

_PAGE = 256  # thumbnails re-embedded per transaction: a crash loses at most one page of work, none of data


@dataclass(frozen=True)
class Space:
    """The running embedding space and what the model manifest says about the others."""

    model_id: str  # e.g. "dlib-resnet-v1/int8-qdq.1a2b3c4d"
    accepts: Mapping[str, str] = field(default_factory=dict)  # other model_id -> why it is this space
    hints: Mapping[str, str] = field(default_factory=dict)  # other model_id -> how to run it instead

    @property
    def model(self) -> str:
        return self.model_id.split("/", 1)[0]


@dataclass(frozen=True)
class Foreign:
    """Faces of one other variant of the running model, over all groups."""

    model_id: str
    faces: int
    thumbnails: int
    groups: tuple[str, ...]


Counts = list[tuple[str, str, int, int]]  # GalleryStore.space_counts(): group, model id, faces, thumbnails


def foreign_variants(counts: Counts, space: Space) -> list[Foreign]:
    """Other variants of the running model that hold faces (other models are other spaces on purpose)."""
    agg: dict[str, list] = {}
    for group, model_id, faces, thumbs in counts:
        if model_id == space.model_id or model_id.split("/", 1)[0] != space.model:
            continue
        entry = agg.setdefault(model_id, [0, 0, []])
        entry[0] += faces
        entry[1] += thumbs
        entry[2].append(group)
    return [Foreign(m, n, t, tuple(sorted(g))) for m, (n, t, g) in sorted(agg.items())]


def other_models(counts: Counts, space: Space) -> dict[str, int]:
    """Faces of other models entirely: kept, never searched by this engine."""
    out: dict[str, int] = {}
    for _group, model_id, faces, _thumbs in counts:
        if model_id.split("/", 1)[0] != space.model:
            out[model_id] = out.get(model_id, 0) + faces
    return out


Plan = Literal["accept", "reembed", "refuse"]


def plan(space: Space, other: Foreign, policy: str) -> Plan:
    """What the start does with the faces of another variant: the one rule both the start and `doctor` use."""
    if other.model_id in space.accepts:
        return "accept"
    if policy == "reembed" and other.thumbnails == other.faces:
        return "reembed"
    return "refuse"


def reconcile(
    config: GalleryConfig, space: Space, embed_thumbnails: EmbedThumbnails, policy: str = "reembed"
) -> None:
    """Bring every face of another variant of the running model into the running space, or refuse.

    Logs what was done, one line per variant. Raises ConfigError naming the fix when faces of another
    variant cannot be brought over (no thumbnail, or policy 'refuse')."""
    store = GalleryStore(config)
    try:
        counts = store.space_counts()
        for other in foreign_variants(counts, space):
            _bring_over(store, config, space, other, embed_thumbnails, policy)
        for model_id, faces in other_models(counts, space).items():
            log.warning(
                "gallery holds %d face(s) of model %s; this engine (%s) does not search them",
                faces,
                model_id,
                space.model_id,
            )
    finally:
        store.close()


def _bring_over(
    store: GalleryStore,
    config: GalleryConfig,
    space: Space,
    other: Foreign,
    embed_thumbnails: EmbedThumbnails,
    policy: str,
) -> None:
    action = plan(space, other, policy)
    if action == "accept":
        moved = store.relabel_space(other.model_id, space.model_id)
        _drop_index_files(config, other)
        log.warning(
            "gallery: accepted %d face(s) of %s as %s: %s",
            moved,
            other.model_id,
            space.model_id,
            space.accepts[other.model_id],
        )
        return
    if action == "reembed":
        n = _reembed(store, space.model_id, other.model_id, embed_thumbnails)
        _drop_index_files(config, other)
        log.warning(
            "gallery: re-embedded %d face(s) of %s from their thumbnails into %s",
            n,
            other.model_id,
            space.model_id,
        )
        return
    missing = other.faces - other.thumbnails
    why = (
        f"{missing} of them have no thumbnail to re-embed from"
        if missing
        else "gallery.on_variant_change is 'refuse'"
    )
    run_it = space.hints.get(other.model_id, "run the runtime and precision that enrolled them")
    raise ConfigError(
        f"the gallery holds {other.faces} face(s) of {other.model_id} in group(s) "
        f"{', '.join(other.groups)}, but this engine computes {space.model_id}, a different embedding "
        f"space; {why}. To fix: {run_it}; or re-enrol those people (face-agent enroll); or delete those "
        "faces (face-agent gallery delete)"
        + ("" if missing else "; or set gallery.on_variant_change: reembed")
    )


def _reembed(store: GalleryStore, model_id: str, old_model_id: str, embed: EmbedThumbnails) -> int:
    total = 0
    # Each page leaves the old space, so asking again from the start always finds the next page.
    while page := store.thumbnails_of(old_model_id, _PAGE):
        try:
            vectors = embed([data for _label, _fid, _fmt, data in page])
        except InputError as exc:
            raise ConfigError(
                f"re-embedding {old_model_id} into {model_id} stopped at face {page[0][1]}..: {exc}; the "
                "faces done so far are in the new space, the rest are untouched"
            ) from exc
        if len(vectors) != len(page):
            raise ConfigError(f"re-embedding returned {len(vectors)} vectors for {len(page)} thumbnails")
        total += store.replace_embeddings(
            model_id, [(fid, v) for (_l, fid, _f, _d), v in zip(page, vectors, strict=True)]
        )
    return total


def _drop_index_files(config: GalleryConfig, other: Foreign) -> None:
    """The moved faces' old index files describe a space that no longer has faces: remove them."""
    for group in other.groups:
        for path in index_paths(config.path / "indexes", group, other.model_id):
            path.unlink(missing_ok=True)


class SpaceSource(Protocol):
    """What the gallery needs of an engine to keep one space: its variant id, what the manifest says of the
    other variants, and a way to embed thumbnails (aligned-chip JPEGs) with it."""

    model_id: str
    space_accepts: Mapping[str, str]
    space_hints: Mapping[str, str]

    def embed_thumbnails(self, thumbnails: list[bytes]) -> np.ndarray: ...


def open_gallery(config: GalleryConfig, engine: SpaceSource) -> Gallery:
    """The gallery for this engine: other variants of its model brought into its space first (see module
    docstring), then the indexes opened. Every entry point that has an engine opens its gallery here."""
    space = Space(engine.model_id, dict(engine.space_accepts), dict(engine.space_hints))
    reconcile(config, space, engine.embed_thumbnails, config.on_variant_change)
    return Gallery(config)
