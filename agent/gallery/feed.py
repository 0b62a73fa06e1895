"""Reading the change feed (the hub side of gallery sync): pages of operations since a cursor, snapshots,
compaction. The wire format is docs/sync.md.

Feed rows hold ids only; each operation is resolved against the current data when it is read. So a page
never carries the embedding of a face deleted since, and replaying a page twice changes nothing: every
operation is idempotent (an add of a face the edge has is skipped, a delete of one it lacks is a no-op).
That is what makes a snapshot exact: its pages are read at the present, and the edge then replays the feed
from the cursor taken when the snapshot started; whatever the pages already hold is a no-op in the replay.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Literal

from agent.errors import InputError
from agent.gallery.db import Conn
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
)

Thumbnails = Literal["never", "auto", "always"]  # auto: only for faces of another model than the reader's

FLOOR_KEY = "feed_floor"
_COMPACT_BATCH = 10_000
# meta rows "group_floor:<group_id>": the newest operation of that group compaction dropped. A cursor at or
# past it has missed nothing, so a quiet group whose every operation was compacted keeps its head (and its
# edges their cursors) instead of sending each edge into a snapshot after every compaction, forever.
GROUP_FLOOR_PREFIX = "group_floor:"


class ResyncRequired(InputError):
    """The cursor is older than what the feed keeps: take a snapshot."""

    def __init__(self, cursor: int, floor: int) -> None:
        super().__init__(
            f"cursor {cursor} is older than the feed keeps (operations up to {floor} were compacted); "
            "take a snapshot",
            code="resync_required",
        )
        self.floor = floor


@dataclass(frozen=True)
class Page:
    ops: list[dict]
    next: int | str | None  # feed: the cursor after this page; snapshot: the token of the next page or None
    more: bool
    head: int  # the group's newest sequence number when the page was read
    cursor: int | None = None  # snapshot pages: the feed cursor the snapshot is consistent with


@dataclass(frozen=True)
class FeedStats:
    ops: int
    oldest: int  # oldest sequence number kept (0: empty)
    head: int
    floor: int  # operations up to here were compacted away


def floor(conn: Conn) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (FLOOR_KEY,)).fetchone()
    return int(row[0]) if row else 0


def group_floor(conn: Conn, group_id: str) -> int:
    """The newest operation of this group compaction dropped (0: none): a cursor below it missed one."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (GROUP_FLOOR_PREFIX + group_id,)).fetchone()
    return int(row[0]) if row else 0


def group_head(conn: Conn, group_id: str) -> int:
    """The group's newest sequence number, also when compaction dropped all of its operations."""
    row = conn.execute("SELECT MAX(seq) FROM feed WHERE group_id = ?", (group_id,)).fetchone()
    return max(int(row[0] or 0), group_floor(conn, group_id))


_FLOORS_SQL = "SELECT substr(name, ?), value FROM meta WHERE substr(name, 1, ?) = ?"


def heads(store: GalleryStore) -> dict[str, int]:
    """Newest sequence number of every group that has or had operations (the hub announces these)."""
    out = {g: int(s) for g, s in store.read("SELECT group_id, MAX(seq) FROM feed GROUP BY group_id")}
    n = len(GROUP_FLOOR_PREFIX)
    for gid, value in store.read(_FLOORS_SQL, (n + 1, n, GROUP_FLOOR_PREFIX)):
        out[gid] = max(out.get(gid, 0), int(value))
    return out


def stats(store: GalleryStore) -> FeedStats:
    with store.reader() as conn:
        n, lo, hi = conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM feed").fetchone()
        low = floor(conn)
        return FeedStats(int(n), int(lo or 0), max(int(hi or 0), low), low)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_FACE_SQL = (
    "SELECT f.face_id, f.person_id, p.outer_id, p.user_info, f.model_id, f.dim, f.embedding, f.quality,"
    " f.created_at, t.format, t.data, f.label FROM faces f JOIN persons p ON p.person_id = f.person_id"
    " LEFT JOIN face_thumbs t ON t.face_id = f.face_id"
)


def _face(row: tuple, thumbnails: Thumbnails, model_id: str | None) -> dict:
    fid, pid, outer, info, model, dim, emb, quality, created, fmt, thumb, _ = row
    out = {
        "face_id": fid,
        "person_id": pid,
        "outer_id": outer,
        "user_info": info,
        "model_id": model,
        "dim": int(dim),
        "embedding": _b64(bytes(emb)),
        "quality": quality,
        "created_at": created,
    }
    if thumb is not None and (thumbnails == "always" or (thumbnails == "auto" and model != model_id)):
        out["thumbnail"] = _b64(bytes(thumb))
        out["thumbnail_format"] = fmt
    out["has_thumbnail"] = thumb is not None
    return out


def _group(conn: Conn, group_id: str) -> dict | None:
    row = conn.execute("SELECT group_name, info FROM groups WHERE group_id = ?", (group_id,)).fetchone()
    return None if row is None else {"group_id": group_id, "group_name": row[0], "info": row[1]}


def _person(conn: Conn, person_id: str, group_id: str) -> dict | None:
    row = conn.execute(
        "SELECT outer_id, user_info FROM persons WHERE person_id = ? AND group_id = ?", (person_id, group_id)
    ).fetchone()
    return None if row is None else {"person_id": person_id, "outer_id": row[0], "user_info": row[1]}


def _resolve(
    conn: Conn, group_id: str, op: str, key: str, thumbnails: Thumbnails, model_id: str | None
) -> dict | None:
    """The operation with its current data, or None when its subject is gone (a later op says so)."""
    if op in (GROUP_CREATED, GROUP_UPDATED):
        return _group(conn, group_id)
    if op == GROUP_DELETED:
        return {"group_id": group_id}
    if op == PERSON_UPDATED:
        return _person(conn, key, group_id)
    if op == PERSON_DELETED:
        return {"person_id": key}
    if op in (FACE_ADDED, FACE_UPDATED):
        row = conn.execute(_FACE_SQL + " WHERE f.face_id = ? AND f.group_id = ?", (key, group_id)).fetchone()
        return None if row is None else _face(row, thumbnails, model_id)
    if op == FACE_DELETED:
        return {"face_id": key}
    raise ValueError(f"unknown feed operation {op!r}")


def _size(item: dict) -> int:
    return len(json.dumps(item, separators=(",", ":")))


def read_feed(
    store: GalleryStore,
    group_id: str,
    after: int,
    *,
    limit: int,
    max_bytes: int,
    thumbnails: Thumbnails = "auto",
    model_id: str | None = None,
) -> Page:
    """Operations of one group with seq > `after`, at most `limit` and about `max_bytes` of JSON (always at
    least one), read in one database snapshot. Raises ResyncRequired when `after` predates the floor."""
    with store.reader() as conn:
        if _group(conn, group_id) is None:
            raise InputError(f"group {group_id!r} not found", code="group_not_found")
        low = group_floor(conn, group_id)
        if after < low:
            raise ResyncRequired(after, low)
        head = group_head(conn, group_id)
        rows = conn.execute(
            "SELECT seq, op, key FROM feed WHERE group_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (group_id, after, limit + 1),
        ).fetchall()
        ops: list[dict] = []
        size, cursor = 0, after
        for seq, op, key in rows[:limit]:
            if op == GROUP_DELETED:
                # The group exists (checked above), so it was deleted and created again: what the edge holds
                # belongs to the old one, and only a snapshot of the new one (whose sweep removes the rest)
                # is exact. Ops are resolved at the present, so replaying the old life would be wrong.
                raise ResyncRequired(after, int(seq))
            data = _resolve(conn, group_id, op, key, thumbnails, model_id)
            cursor = int(seq)
            if data is None:
                continue
            item = {"seq": cursor, "op": op, **data}
            size += _size(item)
            ops.append(item)
            if size >= max_bytes:
                break
        more = cursor < head
        return Page(ops=ops, next=cursor, more=more, head=head)


def read_snapshot(
    store: GalleryStore,
    group_id: str,
    token: str | None,
    *,
    limit: int,
    max_bytes: int,
    thumbnails: Thumbnails = "auto",
    model_id: str | None = None,
) -> Page:
    """One page of a group's present state: the group, then its persons, then its faces, as
    group_updated / person_updated / face_added operations (seq 0). The first page (token None) also
    carries `cursor`: replay the feed from there once the last page (next None) is applied."""
    with store.reader() as conn:
        group = _group(conn, group_id)
        if group is None:
            raise InputError(f"group {group_id!r} not found", code="group_not_found")
        head = group_head(conn, group_id)
        kind, after = _parse_token(token)
        ops: list[dict] = [{"seq": 0, "op": GROUP_UPDATED, **group}] if token is None else []
        size = sum(map(_size, ops))
        if kind == "p":
            rows = conn.execute(
                "SELECT rowid, person_id, outer_id, user_info FROM persons WHERE group_id = ? AND rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (group_id, after, limit),
            ).fetchall()
            for rowid, pid, outer, info in rows:
                item = {"seq": 0, "op": PERSON_UPDATED, "person_id": pid}
                item |= {"outer_id": outer, "user_info": info}
                ops.append(item)
                after = int(rowid)
                size += _size(item)
                if size >= max_bytes:
                    break
            if len(rows) < limit and size < max_bytes:
                kind, after = "f", 0  # persons done: faces follow on the next page
            nxt = f"{kind}{after}"
            return Page(ops, nxt, True, head, cursor=head if token is None else None)
        rows = conn.execute(
            _FACE_SQL + " WHERE f.group_id = ? AND f.label > ? ORDER BY f.label LIMIT ?",
            (group_id, after, limit),
        ).fetchall()
        for row in rows:
            item = {"seq": 0, "op": FACE_ADDED, **_face(row, thumbnails, model_id)}
            ops.append(item)
            after = int(row[-1])
            size += _size(item)
            if size >= max_bytes:
                break
        done = len(rows) < limit and size < max_bytes
        first = head if token is None else None
        return Page(ops, None if done else f"f{after}", not done, head, cursor=first)


def _parse_token(token: str | None) -> tuple[str, int]:
    if token is None:
        return "p", 0
    digits = token[1:]
    if not (1 <= len(digits) <= 18 and token[0] in "pf" and digits.isascii() and digits.isdigit()):
        raise InputError("snapshot token is not one this hub gave out", code="invalid_token")
    return token[0], int(digits)


def compact(store: GalleryStore, *, keep_ops: int, keep_s: float, now: float | None = None) -> int:
    """Drop operations beyond the newest `keep_ops` and older than `keep_s`; an edge whose cursor is below
    the newest dropped operation of its group resyncs from a snapshot. Returns how many rows went."""
    now = time.time() if now is None else now
    with store.transaction() as conn:
        row = conn.execute("SELECT seq FROM feed ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep_ops,)).fetchone()
        by_count = int(row[0]) if row else 0
        row = conn.execute("SELECT MAX(seq) FROM feed WHERE at < ?", (now - keep_s,)).fetchone()
        by_age = int(row[0] or 0)
        cut = max(by_count, by_age)
        if cut <= floor(conn):
            return 0
        dropped = conn.execute(
            "SELECT group_id, MAX(seq) FROM feed WHERE seq <= ? GROUP BY group_id", (cut,)
        ).fetchall()
        for gid, top in dropped:
            _set_meta(conn, GROUP_FLOOR_PREFIX + gid, int(top))
        _set_meta(conn, FLOOR_KEY, cut)  # readers refuse cursors below the floors from now on
    # The rows go in batches, each its own short transaction, so enrolment is not blocked for a long
    # delete; rows at or below the floors are never read again, so a partial delete is harmless.
    n = 0
    while True:
        with store.transaction() as conn:
            got = conn.execute(
                "DELETE FROM feed WHERE seq IN (SELECT seq FROM feed WHERE seq <= ? ORDER BY seq LIMIT ?)",
                (cut, _COMPACT_BATCH),
            ).rowcount
        n += int(got)
        if got < _COMPACT_BATCH:
            return n


def _set_meta(conn: Conn, name: str, value: int) -> None:
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (name, str(value)),
    )
