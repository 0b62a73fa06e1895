"""Mirrored groups (the edge side of gallery sync): apply pages of a hub's feed or snapshot to SQLite.

Each page is applied in one transaction together with the sync state it leads to (cursor, snapshot token),
so a crash or kill -9 anywhere resumes from the last committed page with nothing lost or doubled. Every
operation is idempotent (feed.py says why that is needed); a snapshot marks each row it touches with the
resync's generation, and its last page deletes whatever the snapshot did not contain.

Ids are the hub's (group, person and face ids), so a client holding a face id sees the same one on every
door; labels (the hnswlib ids) stay local. The caller (Gallery.apply_mirror) updates the index from the
returned Changes.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

import numpy as np

from agent.errors import InputError
from agent.gallery.store import (
    FACE_ADDED,
    FACE_DELETED,
    FACE_UPDATED,
    GROUP_CREATED,
    GROUP_DELETED,
    GROUP_UPDATED,
    PERSON_DELETED,
    PERSON_UPDATED,
    GalleryStore,
    RemovedFace,
    check_text,
    check_vector,
)


@dataclass(frozen=True)
class MirrorFace:
    face_id: str
    person_id: str
    outer_id: str
    user_info: str
    model_id: str  # the edge's space (re-embedded from the thumbnail when the hub's differs)
    vector: np.ndarray = field(repr=False)
    quality: float | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    thumbnail_format: str = "jpeg"
    created_at: float = 0.0


@dataclass(frozen=True)
class MirrorOp:
    """One operation of a page; `key` is the group, person or face id it is about."""

    op: str
    key: str
    face: MirrorFace | None = None
    outer_id: str | None = None  # person_updated
    user_info: str | None = None  # person_updated
    group_name: str | None = None  # group_created / group_updated
    info: str | None = None  # group_created / group_updated


@dataclass(frozen=True)
class SyncState:
    group_id: str
    hub: str
    cursor: int  # feed operations up to here are applied
    snapshot: str | None  # None: following the feed; "" a snapshot is due; else the next page's token
    generation: int
    head: int  # the hub's newest sequence number at the last page
    caught_up_at: float | None  # when the edge last reached the hub's head
    model_id: str


@dataclass
class Changes:
    added: list[tuple[int, str, np.ndarray]] = field(default_factory=list)  # (label, model_id, vector)
    removed: list[RemovedFace] = field(default_factory=list)
    group_deleted: bool = False


_STATE_SQL = (
    "SELECT group_id, hub, cursor, snapshot, generation, head, caught_up_at, model_id FROM sync_state"
)


def states(store: GalleryStore, hub: str | None = None) -> list[SyncState]:
    rows = store.read(_STATE_SQL + (" WHERE hub = ?" if hub else ""), (hub,) if hub else ())
    return [SyncState(*r) for r in rows]


def state(store: GalleryStore, group_id: str) -> SyncState | None:
    rows = store.read(_STATE_SQL + " WHERE group_id = ?", (group_id,))
    return SyncState(*rows[0]) if rows else None


def adopt(store: GalleryStore, group_id: str, hub: str, model_id: str) -> SyncState:
    """Start mirroring a group: create it, or take over an empty local group of that id (a device whose
    config created its recognition group before the first sync). A local group with persons, or one
    mirrored from another hub, is refused: its data would be silently replaced."""
    check_text(group_id, "group_id", 256)
    with store.transaction() as conn:
        row = conn.execute("SELECT origin FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO groups (group_id, group_name, info, created_at, origin)"
                " VALUES (?, NULL, '', ?, ?)",
                (group_id, time.time(), hub),
            )
        elif row[0] is None:
            persons = conn.execute("SELECT COUNT(*) FROM persons WHERE group_id = ?", (group_id,)).fetchone()
            if persons[0]:
                raise InputError(
                    f"local group {group_id!r} has {persons[0]} person(s); erase it (face-agent gallery "
                    "delete-group) or sync another group before mirroring it from the hub",
                    code="group_conflict",
                )
            conn.execute("UPDATE groups SET origin = ? WHERE group_id = ?", (hub, group_id))
        elif row[0] != hub:
            raise InputError(f"group {group_id!r} is already mirrored from {row[0]}", code="group_conflict")
        conn.execute(
            "INSERT INTO sync_state (group_id, hub, cursor, snapshot, generation, head, model_id)"
            " VALUES (?, ?, 0, NULL, 0, 0, ?) ON CONFLICT(group_id) DO NOTHING",
            (group_id, hub, model_id),
        )
    got = state(store, group_id)
    assert got is not None
    return got


def request_snapshot(store: GalleryStore, group_id: str, model_id: str | None = None) -> None:
    """The hub compacted past our cursor (or this device's model changed): the next pulls take a snapshot."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE sync_state SET snapshot = '', generation = generation + 1,"
            " model_id = COALESCE(?, model_id) WHERE group_id = ?",
            (model_id, group_id),
        )


def mark_caught_up(store: GalleryStore, group_id: str, head: int, at: float) -> None:
    """The hub's head (as listed at `at`) equals our cursor: nothing to pull, current as of `at`."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE sync_state SET head = ?, caught_up_at = ? WHERE group_id = ? AND cursor = ?"
            " AND snapshot IS NULL",
            (head, at, group_id, head),
        )


def apply_page(
    store: GalleryStore,
    group_id: str,
    ops: list[MirrorOp],
    *,
    cursor: int | None,
    snapshot: str | None,
    head: int,
    caught_up: bool,
) -> Changes:
    """Apply one page and record the state it leads to, in one transaction. `cursor` None keeps the
    stored one; `snapshot` is the next snapshot token, or None when following the feed (a snapshot's last
    page passes None: rows of the mirror the snapshot did not touch are deleted)."""
    changes = Changes()
    with store.transaction() as conn:
        st = conn.execute(_STATE_SQL + " WHERE group_id = ?", (group_id,)).fetchone()
        if st is None:
            raise InputError(f"group {group_id!r} is not mirrored here", code="group_not_found")
        in_snapshot = st[3] is not None
        gen = int(st[4]) if in_snapshot else 0
        for op in ops:
            _apply(conn, group_id, op, gen, changes)
            if changes.group_deleted:
                return changes
        if in_snapshot and snapshot is None:
            _sweep(conn, group_id, gen, changes)
        conn.execute(
            "UPDATE sync_state SET cursor = COALESCE(?, cursor), snapshot = ?, head = ?,"
            " caught_up_at = CASE WHEN ? THEN ? ELSE caught_up_at END WHERE group_id = ?",
            (cursor, snapshot, head, caught_up, time.time(), group_id),
        )
    return changes


def erase(store: GalleryStore, hub: str | None = None, group_id: str | None = None) -> Changes:
    """Delete mirrored groups (all of one hub, or one group) with their persons, faces and sync state."""
    changes = Changes(group_deleted=True)
    with store.transaction() as conn:
        if group_id is not None:
            gids = [group_id]
        else:
            gids = [g for (g,) in conn.execute("SELECT group_id FROM groups WHERE origin = ?", (hub,))]
        for gid in gids:
            changes.removed += _removed(conn, _BY_GROUP, gid)
            conn.execute("DELETE FROM groups WHERE group_id = ? AND origin IS NOT NULL", (gid,))
            conn.execute("DELETE FROM sync_state WHERE group_id = ?", (gid,))
    return changes


_BY_GROUP = "SELECT group_id, model_id, label FROM faces WHERE group_id = ?"
_BY_FACE = "SELECT group_id, model_id, label FROM faces WHERE face_id = ?"
_BY_PERSON = "SELECT group_id, model_id, label FROM faces WHERE person_id = ? AND group_id = ?"


def _removed(conn: sqlite3.Connection, sql: str, *params: object) -> list[RemovedFace]:
    return [RemovedFace(g, m, int(lb)) for g, m, lb in conn.execute(sql, params).fetchall()]


def _apply(conn: sqlite3.Connection, group_id: str, op: MirrorOp, gen: int, changes: Changes) -> None:
    if op.op in (GROUP_CREATED, GROUP_UPDATED):
        _update_group(conn, group_id, op)
    elif op.op == GROUP_DELETED:
        changes.removed += _removed(conn, _BY_GROUP, group_id)
        conn.execute("DELETE FROM groups WHERE group_id = ? AND origin IS NOT NULL", (group_id,))
        conn.execute("DELETE FROM sync_state WHERE group_id = ?", (group_id,))
        changes.group_deleted = True
    elif op.op == PERSON_UPDATED:
        assert op.outer_id is not None
        _upsert_person(conn, group_id, op.key, op.outer_id, op.user_info or "", gen, changes)
    elif op.op == PERSON_DELETED:
        _delete_person(conn, group_id, op.key, changes)
    elif op.op in (FACE_ADDED, FACE_UPDATED):
        assert op.face is not None
        _add_face(conn, group_id, op.face, gen, changes)
    elif op.op == FACE_DELETED:
        _delete_face(conn, group_id, op.key, changes)
    else:
        raise InputError(f"unknown feed operation {op.op!r}", code="invalid_page")


def _update_group(conn: sqlite3.Connection, group_id: str, op: MirrorOp) -> None:
    try:
        conn.execute(
            "UPDATE groups SET group_name = ?, info = ? WHERE group_id = ?",
            (op.group_name, op.info or "", group_id),
        )
    except sqlite3.IntegrityError:  # a local group has that name: keep the id-only mirror usable
        conn.execute("UPDATE groups SET info = ? WHERE group_id = ?", (op.info or "", group_id))


def _foreign(conn: sqlite3.Connection, group_id: str, other_group: str, what: str) -> None:
    """An id the hub sends for `group_id` exists in another group here. Within groups this hub mirrors
    it moved (a face re-imported elsewhere on the hub): fine, the caller moves it. In a local group or
    another hub's mirror it is a collision this page must not resolve by deleting someone else's data."""
    hub = conn.execute("SELECT origin FROM groups WHERE group_id = ?", (group_id,)).fetchone()
    other = conn.execute("SELECT origin FROM groups WHERE group_id = ?", (other_group,)).fetchone()
    if hub is None or other is None or other[0] is None or other[0] != hub[0]:
        raise InputError(
            f"the hub's {what} for group {group_id!r} already exists in group {other_group!r} here, which "
            "is not mirrored from the same hub; refusing to overwrite it",
            code="group_conflict",
        )


def _upsert_person(
    conn: sqlite3.Connection,
    group_id: str,
    person_id: str,
    outer_id: str,
    user_info: str,
    gen: int,
    changes: Changes,
) -> None:
    row = conn.execute("SELECT group_id FROM persons WHERE person_id = ?", (person_id,)).fetchone()
    if row is not None and row[0] != group_id:
        _foreign(conn, group_id, row[0], f"person {person_id}")
        _delete_person(conn, row[0], person_id, changes)
    # outer ids are unique in a group on the hub too: another person holding this one was deleted there
    # (its delete is still ahead in the feed), so it goes now.
    clash = conn.execute(
        "SELECT person_id FROM persons WHERE group_id = ? AND outer_id = ? AND person_id != ?",
        (group_id, outer_id, person_id),
    ).fetchone()
    if clash is not None:
        _delete_person(conn, group_id, clash[0], changes)
    conn.execute(
        "INSERT INTO persons (person_id, group_id, outer_id, user_info, created_at, sync_gen)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(person_id) DO UPDATE SET outer_id = excluded.outer_id,"
        " user_info = excluded.user_info, sync_gen = MAX(persons.sync_gen, excluded.sync_gen)",
        (person_id, group_id, outer_id, user_info, time.time(), gen),
    )


def _delete_person(conn: sqlite3.Connection, group_id: str, person_id: str, changes: Changes) -> None:
    changes.removed += _removed(conn, _BY_PERSON, person_id, group_id)
    conn.execute("DELETE FROM persons WHERE person_id = ? AND group_id = ?", (person_id, group_id))


def _delete_face(conn: sqlite3.Connection, group_id: str, face_id: str, changes: Changes) -> None:
    changes.removed += _removed(conn, _BY_FACE + " AND group_id = ?", face_id, group_id)
    conn.execute("DELETE FROM faces WHERE face_id = ? AND group_id = ?", (face_id, group_id))


def _add_face(conn: sqlite3.Connection, group_id: str, f: MirrorFace, gen: int, changes: Changes) -> None:
    _upsert_person(conn, group_id, f.person_id, f.outer_id, f.user_info, gen, changes)
    vec = check_vector(f.vector)
    blob = vec.astype("<f4").tobytes()
    row = conn.execute(
        "SELECT group_id, person_id, model_id, embedding FROM faces WHERE face_id = ?", (f.face_id,)
    ).fetchone()
    if row is not None and tuple(row[:3]) == (group_id, f.person_id, f.model_id) and bytes(row[3]) == blob:
        if gen:  # the same face as held: only mark it as seen by this snapshot
            conn.execute("UPDATE faces SET sync_gen = ? WHERE face_id = ?", (gen, f.face_id))
        return
    if row is not None:  # re-embedded, moved to another person, or (same hub) to another group
        if row[0] != group_id:
            _foreign(conn, group_id, row[0], f"face {f.face_id}")
        _delete_face(conn, row[0], f.face_id, changes)
    dim = conn.execute("SELECT dim FROM faces WHERE model_id = ? LIMIT 1", (f.model_id,)).fetchone()
    if dim is not None and int(dim[0]) != vec.shape[0]:
        raise InputError(
            f"model {f.model_id!r} has dimension {dim[0]}, the hub sent {vec.shape[0]}",
            code="embedding_dim_mismatch",
        )
    cur = conn.execute(
        "INSERT INTO faces (face_id, person_id, group_id, model_id, dim, embedding, quality, created_at,"
        " sync_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (f.face_id, f.person_id, group_id, f.model_id, vec.shape[0], blob, f.quality, f.created_at, gen),
    )
    if f.thumbnail is not None:
        conn.execute(
            "INSERT INTO face_thumbs VALUES (?, ?, ?) ON CONFLICT(face_id) DO UPDATE SET"
            " format = excluded.format, data = excluded.data",
            (f.face_id, f.thumbnail_format, f.thumbnail),
        )
    changes.added.append((int(cur.lastrowid), f.model_id, vec))


def _sweep(conn: sqlite3.Connection, group_id: str, gen: int, changes: Changes) -> None:
    """End of a snapshot: whatever it did not touch is gone on the hub (faces of swept persons too, so
    their labels leave the index)."""
    where = (
        " WHERE group_id = ? AND (sync_gen < ? OR person_id IN"
        " (SELECT person_id FROM persons WHERE group_id = ? AND sync_gen < ?))"
    )
    rows = conn.execute("SELECT group_id, model_id, label FROM faces" + where, (group_id, gen, group_id, gen))
    changes.removed += [RemovedFace(g, m, int(lb)) for g, m, lb in rows.fetchall()]
    conn.execute("DELETE FROM faces" + where, (group_id, gen, group_id, gen))
    conn.execute("DELETE FROM persons WHERE group_id = ? AND sync_gen < ?", (group_id, gen))
