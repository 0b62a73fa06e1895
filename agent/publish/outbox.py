"""Persistent outbox: an SQLite table of messages waiting for the broker's acknowledgement.

`put` commits (WAL, synchronous=FULL) before it returns, so an event survives a crash or power cut the moment
the pipeline hands it over. Rows leave in id order (AUTOINCREMENT never reuses ids, even after a restart)
and are deleted only once acknowledged. The table is bounded by age, row count and payload bytes; the oldest
rows go first and every drop is counted by reason in a `counters` table that survives restarts.

Rows the publisher has handed to the network layer are "pinned": bounds never drop them, because the client
library still holds them and will deliver them, so counting them as lost would be wrong.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FatalError, TransientError
from agent.publish.config import OutboxConfig

log = logging.getLogger(__name__)

DROP_MAX_AGE = "max_age"
DROP_MAX_ROWS = "max_rows"
DROP_MAX_BYTES = "max_bytes"
DROP_INVALID = "invalid"  # the broker library refused the row outright (never expected; logged)
_CHUNK = 500  # ids per SQL statement, well under SQLite's host-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    stamp INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutMessage:
    """A message to queue. `stamp`: a JSON object that gets `seq` and `published_at` when sent."""

    topic: str
    payload: bytes
    retain: bool = False
    stamp: bool = False


@dataclass(frozen=True)
class OutboxRow:
    id: int
    created_at: float
    topic: str
    payload: bytes
    retain: bool
    stamp: bool


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class Outbox:
    """Thread-safe: the pipeline enqueues while the sender thread peeks and deletes."""

    def __init__(self, cfg: OutboxConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._pinned: set[int] = set()
        self._db = self._open(cfg.path)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._rows, self._bytes = int(row[0]), int(row[1])

    # -- opening ---------------------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(f"cannot create the outbox folder {path.parent}: {exc}") from exc
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            # A corrupt file must not stop the agent for months: keep it aside for inspection, start empty.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            try:
                return self._connect(path)
            except sqlite3.Error as exc2:
                raise FatalError(f"cannot open the outbox {path}: {exc2}") from exc2
        except sqlite3.Error as exc:
            raise FatalError(f"cannot open the outbox {path}: {exc}") from exc

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a commit is on disk before put() returns
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    # -- writing ---------------------------------------------------------------------------------------

    def put(self, messages: Sequence[OutMessage]) -> list[int]:
        """Queue `messages` in order, atomically and durably; returns their ids. May drop the oldest rows.
        Raises TransientError when the disk refuses the write (full, read-only): nothing was queued."""
        try:
            return self._put(messages)
        except sqlite3.Error as exc:
            raise TransientError(f"outbox write failed: {exc}", code="outbox_write_failed") from exc

    def _put(self, messages: Sequence[OutMessage]) -> list[int]:
        now = self._clock()
        ids: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for msg in messages:
                    cur = self._db.execute(
                        "INSERT INTO outbox (created_at, topic, payload, size, retain, stamp) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (now, msg.topic, msg.payload, len(msg.payload), int(msg.retain), int(msg.stamp)),
                    )
                    ids.append(int(cur.lastrowid))
                    self._rows += 1
                    self._bytes += len(msg.payload)
                self._drop_expired(now)
                self._trim()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise
        return ids

    def peek(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created_at, topic, payload, retain, stamp FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3]), bool(r[4]), bool(r[5])) for r in rows]

    def delete(self, ids: Iterable[int]) -> int:
        """Remove delivered rows (missing ids are ignored); unpins them. Returns how many were removed."""
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        with self._lock:
            self._pinned.difference_update(id_list)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._delete_locked(id_list)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise
        return removed

    def drop(self, ids: Iterable[int], reason: str) -> None:
        """Remove rows that can never be delivered and count them under `reason`."""
        id_list = sorted(set(ids))
        with self._lock:
            self._pinned.difference_update(id_list)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._count(reason, self._delete_locked(id_list))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise

    def prune(self) -> int:
        """Drop rows older than max_age_s (the sender calls this periodically). Returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._drop_expired(self._clock())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise
        return dropped

    def pin(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._pinned.update(ids)

    def unpin(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._pinned.difference_update(ids)

    # -- reading state ---------------------------------------------------------------------------------

    def depth(self) -> int:
        with self._lock:
            return self._rows

    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def oldest_age_s(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
        return None if row[0] is None else max(0.0, self._clock() - float(row[0]))

    def drops(self) -> dict[str, int]:
        """Dropped rows by reason, totalled over the life of the file."""
        with self._lock:
            return {name: int(value) for name, value in self._db.execute("SELECT name, value FROM counters")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers (lock held, inside a transaction) -----------------------------------------------------

    def _delete_locked(self, ids: Sequence[int]) -> int:
        removed = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            count, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})", chunk
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            removed += int(count)
            self._rows -= int(count)
            self._bytes -= int(size)
        return removed

    def _count(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (reason, n),
        )
        log.warning("outbox dropped %d message(s): %s", n, reason)

    def _drop_expired(self, now: float) -> int:
        cutoff = now - self._cfg.max_age_s
        rows = self._db.execute(
            "SELECT id FROM outbox WHERE created_at < ? ORDER BY id", (cutoff,)
        ).fetchall()
        victims = [r[0] for r in rows if r[0] not in self._pinned]
        dropped = self._delete_locked(victims)
        self._count(DROP_MAX_AGE, dropped)
        return dropped

    def _oldest_unpinned(self, limit: int) -> list[tuple[int, int]]:
        rows = self._db.execute(
            "SELECT id, size FROM outbox ORDER BY id LIMIT ?", (limit + len(self._pinned),)
        ).fetchall()
        return [(r[0], r[1]) for r in rows if r[0] not in self._pinned][:limit]

    def _trim(self) -> None:
        excess = self._rows - self._cfg.max_rows
        if excess > 0:
            victims = [rid for rid, _ in self._oldest_unpinned(excess)]
            self._count(DROP_MAX_ROWS, self._delete_locked(victims))
        while self._bytes > self._cfg.max_bytes:
            candidates = self._oldest_unpinned(_CHUNK)
            if not candidates:
                return  # only pinned rows left: the network layer will deliver them
            victims, freed = [], 0
            for rid, size in candidates:
                if self._bytes - freed <= self._cfg.max_bytes:
                    break
                victims.append(rid)
                freed += size
            self._count(DROP_MAX_BYTES, self._delete_locked(victims))

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._rows, self._bytes = int(row[0]), int(row[1])
