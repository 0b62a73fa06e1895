"""The store of groups, persons and faces: the gallery's source of truth (SQLite, or PostgreSQL for hubs).

The SQL below runs on both engines (agent/gallery/db.py; PostgreSQL's schema is agent/gallery/pg_schema.py).
The durability and privacy notes that follow are SQLite's; on PostgreSQL a commit is durable when it returns
(synchronous_commit), deleted rows are gone from the tables at once and from the data files once VACUUM
reuses their pages.

Durability: WAL journal with `synchronous=FULL` by default, so every commit fsyncs the WAL before `add_faces`
returns; an acknowledged enrolment survives a kill -9 and a power cut (NORMAL would survive the kill only).
Enrolment is rare next to search, so one fsync per write costs nothing users notice.

Privacy: `secure_delete` zeroes deleted rows (embeddings, thumbnails) in the database file, and a TRUNCATE
checkpoint after each delete drops the old WAL frames that still held them.

Change feed (schema 2): every write to a local group appends its operations to `feed` in the same
transaction as the data, so the feed and the gallery can never disagree (agent/gallery/feed.py reads it, the
hub serves it). Feed rows hold only ids: the data is read when the feed is read, so a deleted face's
embedding does not live on in the feed. Groups mirrored from a hub (`groups.origin` set) are written only by
agent/gallery/mirror.py; every other write to them is refused (`group_read_only`).

Each face has an integer `label` (AUTOINCREMENT, never reused) that is its id inside the hnswlib index; the
public id is the opaque `face_id`. Because labels only grow, (count, max label, label sum) of a (group, model)
changes whenever its set of faces changes, which is how a stale index file is detected.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.errors import FatalError, InputError
from agent.gallery.config import GalleryConfig
from agent.gallery.db import Conn, PostgresDb, SqliteDb

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DB_FILENAME = "gallery.sqlite3"
_MIN_DIM, _MAX_DIM = 16, 4096
_NORM_TOLERANCE = 1e-2
_SQL_CHUNK = 500  # labels per IN (...) query, well under SQLite's variable limit
# Variant re-embedding and relabelling touch local groups only: a mirror takes a new snapshot instead.
_LOCAL_GROUPS = "(SELECT group_id FROM groups WHERE origin IS NULL)"


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE groups (group_id TEXT PRIMARY KEY, group_name TEXT UNIQUE,"
        " info TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE persons (person_id TEXT PRIMARY KEY,"
        " group_id TEXT NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,"
        " outer_id TEXT NOT NULL, user_info TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,"
        " UNIQUE (group_id, outer_id))"
    )
    conn.execute(
        "CREATE TABLE faces (label INTEGER PRIMARY KEY AUTOINCREMENT, face_id TEXT NOT NULL UNIQUE,"
        " person_id TEXT NOT NULL REFERENCES persons(person_id) ON DELETE CASCADE,"
        " group_id TEXT NOT NULL, model_id TEXT NOT NULL, dim INTEGER NOT NULL, embedding BLOB NOT NULL,"
        " quality REAL, created_at REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX faces_by_index ON faces (group_id, model_id, label)")
    conn.execute("CREATE INDEX faces_by_person ON faces (person_id)")
    conn.execute(
        "CREATE TABLE face_thumbs (face_id TEXT PRIMARY KEY REFERENCES faces(face_id) ON DELETE CASCADE,"
        " format TEXT NOT NULL, data BLOB NOT NULL)"
    )


def _schema_v2(conn: sqlite3.Connection) -> None:
    """Change feed, mirrored groups (edge), device credentials and grants (hub)."""
    conn.execute("ALTER TABLE groups ADD COLUMN origin TEXT")  # NULL: local; else the hub it mirrors
    conn.execute("ALTER TABLE persons ADD COLUMN sync_gen INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE faces ADD COLUMN sync_gen INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "CREATE TABLE feed (seq INTEGER PRIMARY KEY AUTOINCREMENT, group_id TEXT NOT NULL,"
        " op TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX feed_by_group ON feed (group_id, seq)")
    conn.execute("CREATE INDEX faces_by_group ON faces (group_id, label)")  # snapshot pages
    conn.execute("CREATE INDEX persons_by_group ON persons (group_id)")  # rowid order within a group
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # Existing data predates the feed: an edge can only take it as a snapshot. Record it as one operation
    # per row so a hub upgraded from schema 1 serves its old faces through the feed too.
    for (gid,) in conn.execute("SELECT group_id FROM groups ORDER BY created_at").fetchall():
        _feed_insert(conn, gid, "group_created", gid)
        for (pid,) in conn.execute("SELECT person_id FROM persons WHERE group_id = ?", (gid,)).fetchall():
            _feed_insert(conn, gid, "person_updated", pid)
        for (fid,) in conn.execute(
            "SELECT face_id FROM faces WHERE group_id = ? ORDER BY label", (gid,)
        ).fetchall():
            _feed_insert(conn, gid, "face_added", fid)
    conn.execute(
        "CREATE TABLE sync_state (group_id TEXT PRIMARY KEY, hub TEXT NOT NULL, cursor INTEGER NOT NULL,"
        " snapshot TEXT, generation INTEGER NOT NULL DEFAULT 0, head INTEGER NOT NULL DEFAULT 0,"
        " caught_up_at REAL, model_id TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, secret TEXT NOT NULL, info TEXT NOT NULL,"
        " created_at REAL NOT NULL, revoked_at REAL)"
    )
    conn.execute(
        "CREATE TABLE grants (device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,"
        " group_id TEXT NOT NULL, PRIMARY KEY (device_id, group_id))"
    )


def _feed_insert(conn: Conn, group_id: str, op: str, key: str) -> None:
    conn.execute(
        "INSERT INTO feed (group_id, op, key, at) VALUES (?, ?, ?, ?)", (group_id, op, key, time.time())
    )


# Migration hook: MIGRATIONS[v] upgrades a database at version v-1 to version v, inside one transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _schema_v1, 2: _schema_v2}

# Feed operations (docs/sync.md): the key is the group, person or face id the operation is about.
GROUP_CREATED, GROUP_UPDATED, GROUP_DELETED = "group_created", "group_updated", "group_deleted"
PERSON_UPDATED, PERSON_DELETED = "person_updated", "person_deleted"
FACE_ADDED, FACE_UPDATED, FACE_DELETED = "face_added", "face_updated", "face_deleted"


@dataclass(frozen=True)
class GroupRecord:
    group_id: str
    group_name: str | None
    info: str
    created_at: float
    origin: str | None = None  # the hub a mirrored group comes from; None: a local group


@dataclass(frozen=True)
class PersonRecord:
    person_id: str
    group_id: str
    outer_id: str
    user_info: str
    created_at: float


@dataclass(frozen=True)
class FaceRecord:
    face_id: str
    label: int
    person_id: str
    outer_id: str
    user_info: str
    group_id: str
    model_id: str
    dim: int
    quality: float | None
    created_at: float


@dataclass(frozen=True)
class NewFace:
    """One face to enrol: its person (created if new), embedding and optional aligned thumbnail."""

    outer_id: str
    vector: np.ndarray = field(repr=False)
    model_id: str
    quality: float | None = None
    user_info: str | None = None  # None keeps an existing person's info
    thumbnail: bytes | None = field(default=None, repr=False)
    thumbnail_format: str = "jpeg"
    face_id: str | None = None  # None: a new id; set by `gallery import` to keep an exported face's id


@dataclass(frozen=True)
class RemovedFace:
    """What a delete took out of SQLite, so the caller can take it out of the index too."""

    group_id: str
    model_id: str
    label: int


FACE_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def new_id() -> str:
    """Opaque unique id, 32 lowercase hex characters (the shape of JD faceId and Face++ face_token)."""
    return uuid.uuid4().hex


def check_text(value: object, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string", code=f"invalid_{what}")
    if (not value and not allow_empty) or len(value) > max_chars or "\x00" in value:
        raise InputError(f"{what} must be 1..{max_chars} characters without NUL", code=f"invalid_{what}")
    return value


def check_vector(vector: object) -> np.ndarray:
    """A finite, 1-D, L2-normalised float vector; anything else is the caller's bug, reported loudly."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or not _MIN_DIM <= arr.shape[0] <= _MAX_DIM:
        raise InputError(
            f"embedding must be 1-D with {_MIN_DIM}..{_MAX_DIM} values", code="invalid_embedding"
        )
    norm = float(np.linalg.norm(arr))
    if not math.isfinite(norm) or abs(norm - 1.0) > _NORM_TOLERANCE:
        raise InputError(f"embedding must be L2-normalised (norm {norm:.4f})", code="invalid_embedding")
    return arr


def open_db(config: GalleryConfig) -> SqliteDb | PostgresDb:
    """The configured database, connected (not migrated)."""
    if config.database is not None:
        return PostgresDb(config.database, pool_size=config.pool_size, timeout_s=config.busy_timeout_s)
    config.path.mkdir(parents=True, exist_ok=True)
    return SqliteDb(config.path / DB_FILENAME, config.busy_timeout_s, config.synchronous)


class GalleryStore:
    """Thread-safe. SQLite: one connection behind a lock for writes and point reads, bulk scans open their
    own; PostgreSQL: a connection pool (agent/gallery/db.py)."""

    def __init__(self, config: GalleryConfig) -> None:
        self._cfg = config
        config.path.mkdir(parents=True, exist_ok=True)
        self.db = open_db(config)
        self._integrity = self.db.integrity_errors
        try:
            if isinstance(self.db, PostgresDb):
                from agent.gallery.pg_schema import require_current

                require_current(self.db)
            else:
                self._migrate()
        except BaseException:
            self.db.close()
            raise

    @property
    def db_path(self) -> str:
        """Where the data lives: the SQLite file, or the PostgreSQL URL without its password."""
        return self.db.describe()

    @property
    def shared(self) -> bool:
        """True when other processes write the same database (PostgreSQL: several hub processes)."""
        return isinstance(self.db, PostgresDb)

    # -- connection and schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FatalError(
                    f"gallery database {self.db_path} has schema {version}, newer than this agent "
                    f"({SCHEMA_VERSION}); upgrade the agent"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                log.info("migrating gallery schema %d -> %d", target - 1, target)
                MIGRATIONS[target](conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def transaction(self) -> contextlib.AbstractContextManager[Conn]:
        """The write transaction, for the gallery's own modules (feed.py, mirror.py)."""
        return self._tx()

    def read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """A point query under the store lock, for the gallery's own modules."""
        return self._query(sql, params)

    def reader(self) -> contextlib.AbstractContextManager[Conn]:
        """A read-only transaction on its own connection: a consistent snapshot (SQLite's WAL, PostgreSQL's
        REPEATABLE READ) that neither holds the store lock nor sees half of a concurrent write."""
        return self.db.reader()

    def feed_counter(self) -> int:
        """The feed's sequence counter: moves with every new operation, never back (compaction too)."""
        return self.db.feed_counter()

    def _record(self, conn: Conn, group_id: str, op: str, key: str) -> None:
        """Append one operation to the change feed, inside the caller's transaction. Mirrored groups are
        written by mirror.py only and are not in this store's feed (the hub's feed is their source)."""
        row = conn.execute("SELECT origin FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        if row is None or row[0] is None:
            _feed_insert(conn, group_id, op, key)

    @staticmethod
    def _require_writable(conn: Conn, group_id: str) -> None:
        row = conn.execute("SELECT origin FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        if row is None:
            raise InputError(f"group {group_id!r} not found", code="group_not_found")
        if row[0] is not None:
            raise InputError(
                f"group {group_id!r} is mirrored from the hub {row[0]} and read-only here; "
                "change it on the hub",
                code="group_read_only",
            )

    def _tx(self) -> contextlib.AbstractContextManager[Conn]:
        """One write transaction, committed (and durable) before the block's caller gets control back."""
        return self.db.tx()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        return self.db.query(sql, params)

    def close(self) -> None:
        self.db.close()

    def scrub_wal(self) -> None:
        """After mirror deletes (mirror.py): drop WAL frames that held the deleted embeddings."""
        self._scrub_wal()

    def _scrub_wal(self) -> None:
        """Drop WAL frames that may still hold deleted embeddings; best effort if a reader holds the WAL."""
        if not self.db.scrub():
            log.info("WAL checkpoint after delete was blocked by a reader; old frames go at the next one")

    # -- groups ------------------------------------------------------------------------------------------

    def create_group(
        self, group_id: str | None = None, group_name: str | None = None, info: str = ""
    ) -> GroupRecord:
        limit = self._cfg.max_text_chars
        gid = check_text(group_id, "group_id", limit) if group_id is not None else new_id()
        name = check_text(group_name, "group_name", limit) if group_name is not None else None
        rec = GroupRecord(gid, name, check_text(info, "info", limit, allow_empty=True), time.time())
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO groups (group_id, group_name, info, created_at) VALUES (?, ?, ?, ?)",
                    (gid, name, rec.info, rec.created_at),
                )
                _feed_insert(conn, gid, GROUP_CREATED, gid)
        except self._integrity as exc:
            raise InputError(f"group {gid!r} / {name!r} already exists", code="group_exists") from exc
        return rec

    def update_group(
        self, group_id: str, group_name: str | None = None, info: str | None = None
    ) -> GroupRecord:
        """Rename a group and/or change its info (None keeps the value)."""
        limit = self._cfg.max_text_chars
        if group_name is not None:
            check_text(group_name, "group_name", limit)
        if info is not None:
            check_text(info, "info", limit, allow_empty=True)
        try:
            with self._tx() as conn:
                self._require_writable(conn, group_id)
                conn.execute(
                    "UPDATE groups SET group_name = COALESCE(?, group_name), info = COALESCE(?, info)"
                    " WHERE group_id = ?",
                    (group_name, info, group_id),
                )
                self._record(conn, group_id, GROUP_UPDATED, group_id)
        except self._integrity as exc:
            raise InputError(f"group name {group_name!r} is taken", code="group_exists") from exc
        return self.get_group(group_id)

    _GROUP_SELECT = "SELECT group_id, group_name, info, created_at, origin FROM groups"

    def get_group(self, group_id: str | None = None, group_name: str | None = None) -> GroupRecord:
        """By id if given (the id wins over the name, as in JD's API), else by name."""
        if group_id is not None:
            rows = self._query(self._GROUP_SELECT + " WHERE group_id = ?", (group_id,))
        elif group_name is not None:
            rows = self._query(self._GROUP_SELECT + " WHERE group_name = ?", (group_name,))
        else:
            raise InputError("give a group id or a group name", code="missing_group")
        if not rows:
            raise InputError(f"group {group_id or group_name!r} not found", code="group_not_found")
        return GroupRecord(*rows[0])

    def list_groups(self) -> list[GroupRecord]:
        return [GroupRecord(*r) for r in self._query(self._GROUP_SELECT + " ORDER BY created_at")]

    def delete_group(self, group_id: str) -> list[RemovedFace]:
        with self._tx() as conn:
            self._require_writable(conn, group_id)
            _feed_insert(conn, group_id, GROUP_DELETED, group_id)
            removed = self._removed(
                conn, "SELECT group_id, model_id, label FROM faces WHERE group_id = ?", group_id
            )
            if conn.execute("DELETE FROM groups WHERE group_id = ?", (group_id,)).rowcount == 0:
                raise InputError(f"group {group_id!r} not found", code="group_not_found")
        self._scrub_wal()
        return removed

    # -- persons -----------------------------------------------------------------------------------------

    _PERSON_SELECT = "SELECT person_id, group_id, outer_id, user_info, created_at FROM persons"

    def _person_row(self, conn: Conn, group_id: str, outer_id: str) -> tuple | None:
        sql = self._PERSON_SELECT + " WHERE group_id = ? AND outer_id = ?"
        return conn.execute(sql, (group_id, outer_id)).fetchone()

    def _upsert_person(self, conn: Conn, group_id: str, outer_id: str, info: str | None) -> str:
        row = self._person_row(conn, group_id, outer_id)
        if row is None:
            pid = new_id()
            conn.execute(
                "INSERT INTO persons (person_id, group_id, outer_id, user_info, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (pid, group_id, outer_id, info or "", time.time()),
            )
            self._record(conn, group_id, PERSON_UPDATED, pid)
            return pid
        if info is not None and info != row[3]:
            conn.execute("UPDATE persons SET user_info = ? WHERE person_id = ?", (info, row[0]))
            self._record(conn, group_id, PERSON_UPDATED, str(row[0]))
        return str(row[0])

    def upsert_person(self, group_id: str, outer_id: str, user_info: str | None = None) -> PersonRecord:
        limit = self._cfg.max_text_chars
        check_text(outer_id, "outer_id", limit)
        if user_info is not None:
            check_text(user_info, "user_info", limit, allow_empty=True)
        with self._tx() as conn:
            self._require_writable(conn, group_id)
            self._upsert_person(conn, group_id, outer_id, user_info)
            return PersonRecord(*self._person_row(conn, group_id, outer_id))

    def get_person(self, group_id: str, outer_id: str) -> PersonRecord:
        rows = self._query(self._PERSON_SELECT + " WHERE group_id = ? AND outer_id = ?", (group_id, outer_id))
        row = rows[0] if rows else None
        if row is None:
            raise InputError(f"person {outer_id!r} not found in group {group_id!r}", code="person_not_found")
        return PersonRecord(*row)

    def list_persons(self, group_id: str) -> list[PersonRecord]:
        sql = self._PERSON_SELECT + " WHERE group_id = ? ORDER BY created_at"
        return [PersonRecord(*r) for r in self._query(sql, (group_id,))]

    def delete_person(self, group_id: str, outer_id: str) -> list[RemovedFace]:
        with self._tx() as conn:
            self._require_writable(conn, group_id)
            row = self._person_row(conn, group_id, outer_id)
            if row is None:
                raise InputError(
                    f"person {outer_id!r} not found in group {group_id!r}", code="person_not_found"
                )
            removed = self._removed(
                conn, "SELECT group_id, model_id, label FROM faces WHERE person_id = ?", row[0]
            )
            conn.execute("DELETE FROM persons WHERE person_id = ?", (row[0],))
            self._record(conn, group_id, PERSON_DELETED, str(row[0]))
        self._scrub_wal()
        return removed

    @staticmethod
    def _removed(conn: Conn, sql: str, key: str) -> list[RemovedFace]:
        return [RemovedFace(g, m, int(lbl)) for g, m, lbl in conn.execute(sql, (key,)).fetchall()]

    # -- faces -------------------------------------------------------------------------------------------

    def _check_face(self, face: NewFace) -> np.ndarray:
        limit = self._cfg.max_text_chars
        check_text(face.outer_id, "outer_id", limit)
        check_text(face.model_id, "model_id", 128)
        if face.user_info is not None:
            check_text(face.user_info, "user_info", limit, allow_empty=True)
        if face.quality is not None and not math.isfinite(face.quality):
            raise InputError("quality must be a finite number", code="invalid_quality")
        if face.thumbnail is not None and not 0 < len(face.thumbnail) <= self._cfg.max_thumbnail_bytes:
            raise InputError(
                f"thumbnail must be 1..{self._cfg.max_thumbnail_bytes} bytes", code="thumbnail_too_large"
            )
        check_text(face.thumbnail_format, "thumbnail_format", 16)
        return check_vector(face.vector)

    def model_dim(self, model_id: str) -> int | None:
        rows = self._query("SELECT dim FROM faces WHERE model_id = ? LIMIT 1", (model_id,))
        return int(rows[0][0]) if rows else None

    def add_faces(self, group_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Enrol faces in one transaction; returns only after the commit reached the disk."""
        if not 1 <= len(faces) <= self._cfg.max_batch:
            raise InputError(f"add 1..{self._cfg.max_batch} faces per call", code="invalid_batch")
        vectors = [self._check_face(f) for f in faces]
        out: list[FaceRecord] = []
        with self._tx() as conn:
            self._require_writable(conn, group_id)
            for face, vec in zip(faces, vectors, strict=True):
                out.append(self._insert_face(conn, group_id, face, vec))
                self._record(conn, group_id, FACE_ADDED, out[-1].face_id)
        return out

    def _insert_face(
        self, conn: Conn, group_id: str, face: NewFace, vec: np.ndarray
    ) -> FaceRecord:
        row = conn.execute("SELECT dim FROM faces WHERE model_id = ? LIMIT 1", (face.model_id,)).fetchone()
        if row is not None and int(row[0]) != vec.shape[0]:
            raise InputError(
                f"model {face.model_id!r} has dimension {row[0]}, got {vec.shape[0]}",
                code="embedding_dim_mismatch",
            )
        if face.face_id is not None and not FACE_ID_RE.match(face.face_id):
            raise InputError("face_id must be 1-64 of [0-9A-Za-z_-]", code="invalid_face_id")
        pid = self._upsert_person(conn, group_id, face.outer_id, face.user_info)
        fid, now = face.face_id or new_id(), time.time()
        blob = vec.astype("<f4").tobytes()
        try:
            label = conn.execute(
                "INSERT INTO faces (face_id, person_id, group_id, model_id, dim, embedding, quality,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING label",
                (fid, pid, group_id, face.model_id, vec.shape[0], blob, face.quality, now),
            ).fetchone()[0]
        except self._integrity as exc:  # only a caller-given face_id can collide (uuid4 otherwise)
            raise InputError(f"face {fid!r} already exists", code="face_id_conflict") from exc
        if face.thumbnail is not None:
            conn.execute(
                "INSERT INTO face_thumbs VALUES (?, ?, ?)", (fid, face.thumbnail_format, face.thumbnail)
            )
        info = conn.execute("SELECT user_info FROM persons WHERE person_id = ?", (pid,)).fetchone()[0]
        return FaceRecord(
            fid,
            int(label),
            pid,
            face.outer_id,
            info,
            group_id,
            face.model_id,
            vec.shape[0],
            face.quality,
            now,
        )

    _FACE_SELECT = (
        "SELECT f.face_id, f.label, f.person_id, p.outer_id, p.user_info, f.group_id, f.model_id, f.dim,"
        " f.quality, f.created_at FROM faces f JOIN persons p ON p.person_id = f.person_id"
    )

    def get_face(self, face_id: str) -> FaceRecord:
        rows = self._query(self._FACE_SELECT + " WHERE f.face_id = ?", (face_id,))
        if not rows:
            raise InputError(f"face {face_id!r} not found", code="face_not_found")
        return FaceRecord(*rows[0])

    def faces_of_person(self, group_id: str, outer_id: str) -> list[FaceRecord]:
        sql = self._FACE_SELECT + " WHERE p.group_id = ? AND p.outer_id = ? ORDER BY f.label"
        return [FaceRecord(*r) for r in self._query(sql, (group_id, outer_id))]

    def list_faces(
        self, group_id: str, model_id: str | None = None, *, offset: int = 0, limit: int = 1000
    ) -> list[FaceRecord]:
        if offset < 0 or not 1 <= limit <= 10_000:
            raise InputError("offset must be >= 0 and limit 1..10000", code="invalid_page")
        sql = self._FACE_SELECT + " WHERE f.group_id = ?" + (" AND f.model_id = ?" if model_id else "")
        params: list[object] = [group_id] + ([model_id] if model_id else []) + [limit, offset]
        return [FaceRecord(*r) for r in self._query(sql + " ORDER BY f.label LIMIT ? OFFSET ?", params)]

    def get_embedding(self, face_id: str) -> np.ndarray:
        rows = self._query("SELECT embedding FROM faces WHERE face_id = ?", (face_id,))
        if not rows:
            raise InputError(f"face {face_id!r} not found", code="face_not_found")
        return np.frombuffer(rows[0][0], dtype="<f4").astype(np.float32)

    def person_embeddings(
        self, group_id: str, model_id: str, person_ids: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Every enrolled embedding of these persons in one (group, model), as a (faces x dim) array each."""
        out: dict[str, list[np.ndarray]] = {}
        uniq = sorted(set(person_ids))
        for i in range(0, len(uniq), _SQL_CHUNK):
            part = uniq[i : i + _SQL_CHUNK]
            # By person only (the faces_by_person index): with the group and model in the WHERE clause
            # SQLite's planner scans the whole group instead (5 ms at 15,000 faces: bench_person_rule.py).
            sql = (
                "SELECT person_id, group_id, model_id, embedding FROM faces"
                f" WHERE person_id IN ({','.join('?' * len(part))}) ORDER BY label"
            )
            for pid, gid, mid, emb in self._query(sql, part):
                if gid == group_id and mid == model_id:
                    out.setdefault(str(pid), []).append(np.frombuffer(bytes(emb), dtype="<f4"))
        return {pid: np.stack(v).astype(np.float32) for pid, v in out.items()}

    def count_persons(self, group_id: str, model_id: str) -> int:
        """Persons with at least one face in this (group, model): what a mean-rule search compares."""
        rows = self._query(  # by the persons of the group, each looked up in faces_by_person
            "SELECT COUNT(*) FROM persons p WHERE p.group_id = ? AND EXISTS"
            " (SELECT 1 FROM faces f WHERE f.person_id = p.person_id AND f.model_id = ?)",
            (group_id, model_id),
        )
        return int(rows[0][0])

    def get_thumbnail(self, face_id: str) -> tuple[str, bytes] | None:
        rows = self._query("SELECT format, data FROM face_thumbs WHERE face_id = ?", (face_id,))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def delete_face(self, face_id: str) -> RemovedFace:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT group_id, model_id, label FROM faces WHERE face_id = ?", (face_id,)
            ).fetchone()
            if row is None:
                raise InputError(f"face {face_id!r} not found", code="face_not_found")
            self._require_writable(conn, row[0])
            conn.execute("DELETE FROM faces WHERE face_id = ?", (face_id,))
            self._record(conn, row[0], FACE_DELETED, face_id)
        self._scrub_wal()
        return RemovedFace(row[0], row[1], int(row[2]))

    def resolve(self, labels: Sequence[int]) -> dict[int, FaceRecord]:
        """Face records of the labels that still exist; a deleted face simply is not in the answer."""
        out: dict[int, FaceRecord] = {}
        uniq = sorted({int(x) for x in labels})
        for i in range(0, len(uniq), _SQL_CHUNK):
            part = uniq[i : i + _SQL_CHUNK]
            sql = self._FACE_SELECT + f" WHERE f.label IN ({','.join('?' * len(part))})"
            for row in self._query(sql, part):
                out[int(row[1])] = FaceRecord(*row)
        return out

    # -- embedding spaces (agent/gallery/variants.py) ------------------------------------------------------

    def space_counts(self) -> list[tuple[str, str, int, int]]:
        """(group_id, model_id, faces, faces with a thumbnail) for every (group, model) that has faces."""
        sql = (
            "SELECT f.group_id, f.model_id, COUNT(*), COUNT(t.face_id) FROM faces f"
            " LEFT JOIN face_thumbs t ON t.face_id = f.face_id WHERE f.group_id IN "
            + _LOCAL_GROUPS
            + " GROUP BY f.group_id, f.model_id"
        )
        return [(g, m, int(n), int(t)) for g, m, n, t in self._query(sql)]

    def thumbnails_of(self, model_id: str, limit: int = 256) -> list[tuple]:
        """(label, face_id, format, data) of the first `limit` faces of `model_id` that have a thumbnail."""
        sql = (
            "SELECT f.label, f.face_id, t.format, t.data FROM faces f JOIN face_thumbs t"
            " ON t.face_id = f.face_id WHERE f.model_id = ? AND f.group_id IN "
            + _LOCAL_GROUPS
            + " ORDER BY f.label LIMIT ?"
        )
        return [(int(lb), fid, fmt, bytes(d)) for lb, fid, fmt, d in self._query(sql, (model_id, limit))]

    def replace_embeddings(self, model_id: str, rows: Sequence[tuple[str, np.ndarray]]) -> int:
        """Give faces (face_id, vector) a new embedding in another space, in one transaction: face ids,
        persons, labels and thumbnails stay, so clients holding a face id keep it."""
        checked = [(fid, check_vector(v)) for fid, v in rows]
        with self._tx() as conn:
            for fid, v in checked:
                conn.execute(
                    "UPDATE faces SET model_id = ?, dim = ?, embedding = ? WHERE face_id = ? AND group_id IN "
                    + _LOCAL_GROUPS,
                    (model_id, int(v.shape[0]), v.astype("<f4").tobytes(), fid),
                )
                row = conn.execute("SELECT group_id FROM faces WHERE face_id = ?", (fid,)).fetchone()
                if row is not None:
                    self._record(conn, row[0], FACE_UPDATED, fid)
        self._scrub_wal()
        return len(checked)

    def relabel_space(self, old_model_id: str, new_model_id: str) -> int:
        """Move every face of one space id to another that names the same embeddings (the model manifest
        records the very same file under the older id); returns how many moved. Each move is a
        face_updated operation of the feed, so edges and other hub processes take the new id in."""
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE faces SET model_id = ? WHERE model_id = ? AND group_id IN " + _LOCAL_GROUPS
                + " RETURNING face_id, group_id",
                (new_model_id, old_model_id),
            ).fetchall()
            for face_id, group_id in moved:
                self._record(conn, group_id, FACE_UPDATED, face_id)
            return len(moved)

    # -- what the index layer needs ----------------------------------------------------------------------

    def index_keys(self) -> list[tuple[str, str, int]]:
        """Every (group_id, model_id, dim) that has faces."""
        sql = "SELECT group_id, model_id, MAX(dim) FROM faces GROUP BY group_id, model_id"
        return [(g, m, int(d)) for g, m, d in self._query(sql)]

    def fingerprint(self, group_id: str, model_id: str) -> tuple[int, int, int]:
        """(count, max label, label sum) of a (group, model): changes whenever its set of faces changes."""
        sql = "SELECT COUNT(*), COALESCE(MAX(label), 0), COALESCE(SUM(label), 0) FROM faces"
        row = self._query(sql + " WHERE group_id = ? AND model_id = ?", (group_id, model_id))[0]
        return int(row[0]), int(row[1]), int(row[2])

    def labels(self, group_id: str, model_id: str) -> np.ndarray:
        sql = "SELECT label FROM faces WHERE group_id = ? AND model_id = ? ORDER BY label"
        return np.fromiter((r[0] for r in self._query(sql, (group_id, model_id))), dtype=np.int64)

    def vectors(self, labels: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the given labels that still exist: (labels, vectors)."""
        got_labels: list[int] = []
        blobs: list[bytes] = []
        for i in range(0, len(labels), _SQL_CHUNK):
            part = [int(x) for x in labels[i : i + _SQL_CHUNK]]
            sql = f"SELECT label, embedding FROM faces WHERE label IN ({','.join('?' * len(part))})"
            for lbl, blob in self._query(sql, part):
                got_labels.append(int(lbl))
                blobs.append(bytes(blob))
        return np.asarray(got_labels, dtype=np.int64), _blobs_to_matrix(blobs, dim)

    def iter_vectors(self, group_id: str, model_id: str, dim: int, batch: int = 20_000) -> Iterator[tuple]:
        """Stream (labels, vectors) of one (group, model) from a private read connection (a snapshot),
        so a long index build neither holds the store lock nor sees half of a concurrent write."""
        with self.reader() as conn:
            cur = conn.execute(
                "SELECT label, embedding FROM faces WHERE group_id = ? AND model_id = ? ORDER BY label",
                (group_id, model_id),
            )
            while rows := cur.fetchmany(batch):
                yield (
                    np.asarray([r[0] for r in rows], dtype=np.int64),
                    _blobs_to_matrix([r[1] for r in rows], dim),
                )


def _blobs_to_matrix(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)
