"""The edge's reading of hub pages (docs/sync.md): strict checks of every field, before anything is
applied. A page that breaks the format is a PageError (the hub answered garbage: keep the gallery, retry)."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from agent.gallery.mirror import MirrorFace, MirrorOp
from agent.gallery.store import FACE_ADDED, FACE_UPDATED, GROUP_CREATED, GROUP_UPDATED, PERSON_UPDATED
from agent.sync.client import HubUnavailable

_KNOWN_OPS = {
    "group_created",
    "group_updated",
    "group_deleted",
    "person_updated",
    "person_deleted",
    "face_added",
    "face_updated",
    "face_deleted",
}


class PageError(HubUnavailable):
    """A page that does not follow docs/sync.md: nothing of it is applied."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid page from the hub: {message}", code="hub_garbled")


def page_fields(page: dict, *, snapshot: bool) -> tuple[object, bool, int]:
    for name in ("ops", "more", "head", "next"):
        if name not in page:
            raise PageError(f"missing {name!r}")
    more, head = page["more"], page["head"]
    if not isinstance(more, bool) or not isinstance(head, int) or isinstance(head, bool) or head < 0:
        raise PageError("more must be a boolean and head a non-negative integer")
    if snapshot and more and not isinstance(page["next"], str):
        raise PageError("a snapshot page with more to come has no token")
    return page["next"], more, head


def _text(item: dict, name: str, *, optional: bool = False) -> str | None:
    value = item.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise PageError(f"{item.get('op')}: {name} must be a string")
    return value


def parse_op(item: object) -> MirrorOp:
    if not isinstance(item, dict) or item.get("op") not in _KNOWN_OPS:
        raise PageError(f"unknown operation {item.get('op') if isinstance(item, dict) else item!r}")
    kind = item["op"]
    if kind in (GROUP_CREATED, GROUP_UPDATED):
        return MirrorOp(
            kind,
            str(_text(item, "group_id")),
            group_name=_text(item, "group_name", optional=True),
            info=_text(item, "info", optional=True),
        )
    if kind == PERSON_UPDATED:
        return MirrorOp(
            kind,
            str(_text(item, "person_id")),
            outer_id=_text(item, "outer_id"),
            user_info=_text(item, "user_info", optional=True) or "",
        )
    if kind in (FACE_ADDED, FACE_UPDATED):
        face = _face(item)
        return MirrorOp(kind, face.face_id, face=face)
    key = {"group_deleted": "group_id", "person_deleted": "person_id", "face_deleted": "face_id"}[kind]
    return MirrorOp(kind, str(_text(item, key)))


def _b64(item: dict, name: str) -> bytes:
    try:
        return base64.b64decode(str(_text(item, name)), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PageError(f"{name} is not base64") from exc


def _face(item: dict) -> MirrorFace:
    dim = item.get("dim")
    raw = _b64(item, "embedding")
    if not isinstance(dim, int) or not 16 <= dim <= 4096 or len(raw) != 4 * dim:
        raise PageError(f"face {item.get('face_id')!r}: embedding does not have dim={dim!r} float32 values")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    quality = item.get("quality")
    if quality is not None and (not isinstance(quality, (int, float)) or isinstance(quality, bool)):
        raise PageError("quality must be a number or null")
    created = item.get("created_at", 0.0)
    thumb = _b64(item, "thumbnail") if item.get("thumbnail") is not None else None
    return MirrorFace(
        face_id=str(_text(item, "face_id")),
        person_id=str(_text(item, "person_id")),
        outer_id=str(_text(item, "outer_id")),
        user_info=_text(item, "user_info", optional=True) or "",
        model_id=str(_text(item, "model_id")),
        vector=vector,
        quality=None if quality is None else float(quality),
        thumbnail=thumb,
        thumbnail_format=_text(item, "thumbnail_format", optional=True) or "jpeg",
        created_at=float(created) if isinstance(created, (int, float)) else 0.0,
    )
