"""`face-agent gallery list|export|import|delete`: inspect, move and erase the local gallery.

Archive format (docs/enroll.md, "Gallery archive"): UTF-8 JSON Lines, gzip-compressed when the file name
ends in `.gz`. Line 1 is the header, then groups, persons and faces, and a final `end` record with the counts;
an archive without its `end` record (truncated) or with other counts is refused before anything is written.
Embeddings are base64 of little-endian float32, thumbnails base64 of the stored image.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.errors import InputError
from agent.gallery import Gallery, NewFace
from agent.gallery.store import FACE_ID_RE

FORMAT = "face-agent-gallery"
VERSION = 1
_PAGE = 1000


# -- list ----------------------------------------------------------------------------------------------------


def _faces(gallery: Gallery, group_id: str) -> Iterator[Any]:
    offset = 0
    while page := gallery.list_faces(group_id, offset=offset, limit=_PAGE):
        yield from page
        offset += len(page)


def describe(gallery: Gallery, group_id: str | None = None) -> dict[str, Any]:
    """Groups with person and face counts per model; with `group_id`, that group's persons too."""
    groups = [gallery.get_group(group_id)] if group_id is not None else gallery.list_groups()
    out = []
    for g in groups:
        models: dict[str, int] = {}
        per_person: dict[str, int] = {}
        for f in _faces(gallery, g.group_id):
            models[f.model_id] = models.get(f.model_id, 0) + 1
            per_person[f.outer_id] = per_person.get(f.outer_id, 0) + 1
        persons = gallery.list_persons(g.group_id)
        entry: dict[str, Any] = {
            "group_id": g.group_id,
            "group_name": g.group_name,
            "persons": len(persons),
            "faces": sum(models.values()),
            "models": models,
        }
        if group_id is not None:
            entry["person_list"] = [
                {"outer_id": p.outer_id, "user_info": p.user_info, "faces": per_person.get(p.outer_id, 0)}
                for p in persons
            ]
        out.append(entry)
    return {"groups": out}


def describe_text(info: dict[str, Any]) -> str:
    lines = [f"{'group':<24} {'name':<16} {'persons':>8} {'faces':>8}  models"]
    for g in info["groups"]:
        models = ", ".join(f"{m} ({n})" for m, n in sorted(g["models"].items())) or "-"
        name = g["group_name"] or "-"
        lines.append(f"{g['group_id']:<24} {name:<16} {g['persons']:>8} {g['faces']:>8}  {models}")
        for p in g.get("person_list", []):
            lines.append(f"    {p['outer_id']:<32} {p['faces']:>5} face(s)  {p['user_info']}")
    return "\n".join(lines)


# -- export --------------------------------------------------------------------------------------------------


def _open(path: Path, mode: str, compress: bool | None = None) -> IO[str]:
    if path.suffix == ".gz" if compress is None else compress:
        return gzip.open(path, mode + "t", encoding="utf-8", newline="\n")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8", newline="\n")


def export_gallery(gallery: Gallery, out: Path, group_ids: list[str] | None = None) -> dict[str, int]:
    """Write the archive to `out` atomically (temp file, fsync, rename). Returns the counts."""
    from agent import __version__

    groups = [gallery.get_group(g) for g in group_ids] if group_ids else gallery.list_groups()
    counts = {"groups": 0, "persons": 0, "faces": 0}
    tmp = out.with_name(out.name + ".tmp")
    with _open(tmp, "w", compress=out.suffix == ".gz") as fh:

        def put(record: dict[str, Any]) -> None:
            fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

        put(
            {
                "type": "header",
                "format": FORMAT,
                "version": VERSION,
                "agent_version": __version__,
                "exported_at": time.time(),
            }
        )
        for g in groups:
            put(
                {
                    "type": "group",
                    "group_id": g.group_id,
                    "group_name": g.group_name,
                    "info": g.info,
                    "created_at": g.created_at,
                }
            )
            counts["groups"] += 1
            for p in gallery.list_persons(g.group_id):
                put(
                    {
                        "type": "person",
                        "group_id": g.group_id,
                        "outer_id": p.outer_id,
                        "user_info": p.user_info,
                        "created_at": p.created_at,
                    }
                )
                counts["persons"] += 1
            for f in _faces(gallery, g.group_id):
                put(_face_record(gallery, f))
                counts["faces"] += 1
        put({"type": "end", **counts})
        fh.flush()
    with open(tmp, "rb+") as raw:
        os.fsync(raw.fileno())
    os.replace(tmp, out)
    return counts


def _face_record(gallery: Gallery, f: Any) -> dict[str, Any]:
    vec = gallery.get_embedding(f.face_id).astype("<f4")
    thumb = gallery.get_thumbnail(f.face_id)
    return {
        "type": "face",
        "group_id": f.group_id,
        "outer_id": f.outer_id,
        "face_id": f.face_id,
        "model_id": f.model_id,
        "dim": f.dim,
        "embedding": base64.b64encode(vec.tobytes()).decode(),
        "quality": f.quality,
        "created_at": f.created_at,
        "thumbnail_format": thumb[0] if thumb else None,
        "thumbnail": base64.b64encode(thumb[1]).decode() if thumb else None,
    }


# -- import --------------------------------------------------------------------------------------------------


@dataclass
class Archive:
    groups: list[dict[str, Any]] = field(default_factory=list)
    persons: list[dict[str, Any]] = field(default_factory=list)
    faces: list[dict[str, Any]] = field(default_factory=list)  # with "vector" (np.ndarray) and "thumb" bytes
    dims: dict[str, int] = field(default_factory=dict)


def read_archive(path: Path) -> Archive:
    """Parse and check the whole archive before anything is written; any problem is one InputError."""
    arc, end = Archive(), None
    try:
        with _open(path, "r") as fh:
            for n, line in enumerate(fh, 1):
                if end is not None:
                    raise InputError(f"{path}:{n}: data after the end record", code="invalid_archive")
                rec = _json_line(path, n, line)
                kind = rec.get("type")
                if n == 1:
                    _check_header(path, rec)
                elif kind == "group":
                    arc.groups.append(rec)
                elif kind == "person":
                    arc.persons.append(rec)
                elif kind == "face":
                    arc.faces.append(_decode_face(path, n, rec, arc.dims))
                elif kind == "end":
                    end = rec
                else:
                    raise InputError(f"{path}:{n}: unknown record type {kind!r}", code="invalid_archive")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read archive {path}: {exc}", code="invalid_archive") from exc
    ids = [f["face_id"] for f in arc.faces if f.get("face_id") is not None]
    if len(ids) != len(set(ids)):
        raise InputError(f"{path}: the same face_id appears twice", code="invalid_archive")
    got = {"groups": len(arc.groups), "persons": len(arc.persons), "faces": len(arc.faces)}
    if end is None:
        raise InputError(f"{path} has no end record: the archive is truncated", code="invalid_archive")
    if any(end.get(k) != v for k, v in got.items()):
        raise InputError(
            f"{path}: end record counts {end} differ from the content {got}", code="invalid_archive"
        )
    return arc


def _json_line(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{n}: not JSON: {exc}", code="invalid_archive") from exc
    if not isinstance(rec, dict):
        raise InputError(f"{path}:{n}: a record must be a JSON object", code="invalid_archive")
    return rec


def _check_header(path: Path, rec: dict[str, Any]) -> None:
    if rec.get("type") != "header" or rec.get("format") != FORMAT:
        raise InputError(f"{path} is not a face-agent gallery archive", code="invalid_archive")
    if rec.get("version") != VERSION:
        raise InputError(
            f"{path} has archive version {rec.get('version')}; this agent reads version {VERSION}",
            code="unsupported_archive_version",
        )


def _decode_face(path: Path, n: int, rec: dict[str, Any], dims: dict[str, int]) -> dict[str, Any]:
    try:
        model, dim = str(rec["model_id"]), int(rec["dim"])
        vec = np.frombuffer(base64.b64decode(rec["embedding"], validate=True), dtype="<f4")
        thumb = base64.b64decode(rec["thumbnail"], validate=True) if rec.get("thumbnail") else None
        str(rec["group_id"]), str(rec["outer_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}:{n}: malformed face record: {exc}", code="invalid_archive") from exc
    face_id = rec.get("face_id")
    if face_id is not None and not (isinstance(face_id, str) and FACE_ID_RE.match(face_id)):
        raise InputError(f"{path}:{n}: face_id {face_id!r} is not a face id", code="invalid_archive")
    if vec.shape[0] != dim or dims.setdefault(model, dim) != dim:
        raise InputError(
            f"{path}:{n}: model {model} embeddings of {vec.shape[0]} values, expected {dims[model]}",
            code="embedding_dim_mismatch",
        )
    return {**rec, "vector": vec.astype(np.float32), "thumb": thumb}


def check_models(gallery: Gallery, arc: Archive, allow_unknown: bool, models_dir: Path | None = None) -> None:
    """Refuse models this agent does not know (their embeddings cannot be matched by any probe it makes)
    and dimensions that differ from the manifest or from faces already in the gallery."""
    from agent.inference.manifest import Manifest

    manifest = Manifest(models_dir)
    for model_id, dim in arc.dims.items():
        name = model_id.partition("/")[0]
        known = name in manifest.names("embedder") and model_id in manifest.spaces(name)
        if not known and not allow_unknown:
            raise InputError(
                f"archive holds embeddings of model {model_id!r}, which this agent's model manifest does not "
                f"list (known: {', '.join(manifest.names('embedder'))}); pass --allow-unknown-models to "
                "import them anyway",
                code="unknown_model",
            )
        want = manifest.output_dim(name) if known else None
        have = gallery.store.model_dim(model_id)
        for source, expected in (("the model manifest", want), ("the gallery", have)):
            if expected is not None and int(expected) != dim:
                raise InputError(
                    f"archive embeddings of {model_id} have {dim} values, {source} says {expected}",
                    code="embedding_dim_mismatch",
                )


def _present_by_id(gallery: Gallery, arc: Archive) -> set[str]:
    """Archive face ids the gallery already holds as the same face (group, person, embedding). The same id on
    another face is refused before anything is written: the import must not half-apply."""
    present = set()
    for f in arc.faces:
        if f.get("face_id") is None:
            continue
        try:
            have = gallery.get_face(f["face_id"])
        except InputError as exc:
            if exc.code != "face_not_found":
                raise
            continue
        same = (have.group_id, have.outer_id, have.model_id) == (f["group_id"], f["outer_id"], f["model_id"])
        if not same or gallery.get_embedding(have.face_id).astype("<f4").tobytes() != f["vector"].tobytes():
            raise InputError(
                f"face {f['face_id']} of {f['group_id']}/{f['outer_id']} is a different face in this gallery "
                f"({have.group_id}/{have.outer_id}): nothing was imported",
                code="face_id_conflict",
            )
        present.add(f["face_id"])
    return present


def import_archive(gallery: Gallery, arc: Archive) -> dict[str, int]:
    """Create missing groups, upsert persons, add faces not already present (the same face id, or the same
    person, model and identical embedding), in batches, keeping each face's exported id. Idempotent: a second
    import of the same archive adds nothing."""
    stats = {"groups_created": 0, "persons": 0, "faces_added": 0, "faces_present": 0}
    present_ids = _present_by_id(gallery, arc)
    for g in arc.groups:
        try:
            gallery.get_group(g["group_id"])
        except InputError as exc:
            if exc.code != "group_not_found":
                raise
            gallery.create_group(g["group_id"], g.get("group_name"), g.get("info") or "")
            stats["groups_created"] += 1
    for p in arc.persons:
        gallery.upsert_person(p["group_id"], p["outer_id"], p.get("user_info") or "")
        stats["persons"] += 1
    by_group: dict[str, list[NewFace]] = {}
    present_cache: dict[tuple[str, str], set[bytes]] = {}
    for f in arc.faces:
        key = (f["group_id"], f["outer_id"])
        if key not in present_cache:
            present_cache[key] = {
                gallery.get_embedding(x.face_id).astype("<f4").tobytes()
                for x in gallery.faces_of_person(*key)
            }
        blob = f["vector"].astype("<f4").tobytes()
        if f.get("face_id") in present_ids or blob in present_cache[key]:
            stats["faces_present"] += 1
            continue
        present_cache[key].add(blob)
        by_group.setdefault(f["group_id"], []).append(
            NewFace(
                f["outer_id"],
                f["vector"],
                f["model_id"],
                f.get("quality"),
                None,
                f["thumb"],
                f.get("thumbnail_format") or "jpeg",
                f.get("face_id"),
            )
        )
    step = gallery.config.max_batch
    for group_id, faces in by_group.items():
        for i in range(0, len(faces), step):
            gallery.add_faces(group_id, faces[i : i + step])
            stats["faces_added"] += len(faces[i : i + step])
    return stats


# -- delete --------------------------------------------------------------------------------------------------


def delete(gallery: Gallery, group_id: str, person: str | None = None, face: str | None = None) -> int:
    """Erase a face, a person or a whole group (rows, thumbnails, index entries), then save the indexes so
    the index files on disk no longer hold the erased embeddings. Returns the number of faces erased."""
    if person is not None and face is not None:
        raise InputError("give --person or --face, not both", code="invalid_argument")
    if face is not None:
        if gallery.get_face(face).group_id != group_id:
            raise InputError(f"face {face!r} is not in group {group_id!r}", code="face_not_found")
        gallery.delete_face(face)
        erased = 1
    elif person is not None:
        erased = gallery.delete_person(group_id, person)
    else:
        erased = gallery.delete_group(group_id)
    gallery.save()
    return erased


# -- CLI -----------------------------------------------------------------------------------------------------


def gallery_main(args: Any) -> int:
    from agent.cli.serve import load_serve_config

    cfg = load_serve_config(args.config, os.environ, {"state_dir": args.state_dir})
    with Gallery(cfg.gallery) as gallery:
        if args.action == "list":
            info = describe(gallery, args.group)
            print(json.dumps(info, ensure_ascii=False, indent=1) if args.json else describe_text(info))
        elif args.action == "export":
            counts = export_gallery(gallery, args.out, args.group)
            print(
                f"exported {counts['groups']} group(s), {counts['persons']} person(s), "
                f"{counts['faces']} face(s) to {args.out}"
            )
        elif args.action == "import":
            arc = read_archive(args.file)
            check_models(gallery, arc, args.allow_unknown_models, cfg.engine.models_dir)
            stats = import_archive(gallery, arc)
            print(
                f"imported {args.file}: {stats['groups_created']} group(s) created, {stats['persons']} "
                f"person(s), {stats['faces_added']} face(s) added, {stats['faces_present']} already present"
            )
        else:
            if args.person is None and args.face is None and not args.yes:
                raise InputError(
                    f"deleting the whole group {args.group!r} needs --yes", code="confirm_needed"
                )
            n = delete(gallery, args.group, args.person, args.face)
            what = f"face {args.face}" if args.face else f"person {args.person!r}" if args.person else "group"
            print(f"erased {what} in group {args.group!r}: {n} face(s)")
    return 0
