"""The gallery store's two databases: SQLite (a device, a one-box hub) and PostgreSQL (several hub processes).

`GalleryStore`, the feed and the hub's device table speak one SQL that both engines accept (`?`
placeholders, `ON CONFLICT`, `RETURNING`); each engine here supplies the connection, the transaction, the
snapshot reader and the schema. Only the types and the schema's DDL differ (pg_schema.py for PostgreSQL).

Writes are serialised on both: SQLite by `BEGIN IMMEDIATE`, PostgreSQL by a transaction-level advisory
lock taken as the first statement of every write transaction. On PostgreSQL that lock is also what keeps
the change feed exact with several hub processes: feed sequence numbers come from a sequence, and without
the lock a transaction holding 104 could commit after one holding 105, so a reader that saw 105 would skip
104 for ever. With it, a writer draws its numbers only after every earlier writer has committed, so what a
reader sees of the feed is always a prefix (gaps are rolled-back numbers, never a later commit). Enrolment
is a few writes a second even on a large site, so one writer at a time costs nothing that matters.

psycopg 3 with psycopg_pool: the maintained driver. A lost connection or a timeout is a TransientError
(`database_unavailable`: the API answers 503, the caller retries); the pool drops a connection returned
broken and opens new ones, so after PostgreSQL restarts the hub reconnects by itself (the requests that
met an old connection got 503). Connections are not checked before each use: that would be one more round
trip per query, about a third of a hub request's cost (scripts/bench_sync.py --postgres). A commit that
returned was acknowledged by the server (synchronous_commit on) and is never lost.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from agent.errors import FatalError, InputError, TransientError

log = logging.getLogger(__name__)

# The advisory lock every PostgreSQL write transaction takes: a fixed 64-bit key ("face-agent gallery").
WRITE_LOCK_KEY = 0x6661_6365_6167_6C01
POSTGRES_URL_RE = re.compile(r"^postgres(ql)?://")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...


class Conn(Protocol):
    """What store, feed and device code use of a connection: sqlite3.Connection has exactly this."""

    def execute(self, sql: str, params: Sequence[object] = ...) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> Cursor: ...


_PASSWORD_PARAM_RE = re.compile(r"(?i)(^|&)(password)=[^&]*")


def masked(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter), for logs and `doctor`.
    Works on the raw text: a libpq URL may name several hosts or IPv6 literals that urlsplit's port and
    hostname parsing refuses or rewrites."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"  # not even splittable: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = _PASSWORD_PARAM_RE.sub(r"\1\2=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class SqliteDb:
    """One connection behind a lock for writes and point reads; snapshot readers open their own."""

    kind = "sqlite"
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, busy_timeout_s: float, synchronous: str) -> None:
        self.path = path
        self._timeout = busy_timeout_s
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise FatalError(f"cannot open gallery database {path}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise FatalError(f"gallery database {path} refused WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")
        self._conn = conn

    def describe(self) -> str:
        return str(self.path)

    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def reader(self) -> Iterator[Conn]:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def scrub(self) -> bool:
        """Drop WAL frames that may still hold deleted rows; False if a reader held the WAL."""
        with self._lock:
            return not self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]

    def feed_counter(self) -> int:
        """The feed's AUTOINCREMENT counter: moves with every new operation, never back."""
        rows = self.query("SELECT seq FROM sqlite_sequence WHERE name = 'feed'")
        return int(rows[0][0]) if rows else 0

    feed_drawn = feed_counter  # one writer: every drawn number is committed or rolled back at once

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The shared SQL's `?` placeholders in psycopg's style (no statement here holds a literal `?`)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _checked(params: Sequence[object]) -> tuple:
    """PostgreSQL text holds neither NUL nor lone surrogates (psycopg raises DataError / UnicodeEncodeError,
    which would be a 500). Writes refuse NUL before they get here (store.check_text), so such a value can
    only be a lookup key that matches nothing; it is refused as bad input (SQLite answers not-found)."""
    for p in params:
        if isinstance(p, str) and ("\x00" in p or not p.isascii() and _has_surrogate(p)):
            raise InputError("text must be valid Unicode without NUL characters", code="invalid_text")
    return tuple(params)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _PgConn:
    """A psycopg connection that takes the shared SQL; errors of a lost server become TransientError."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        checked = _checked(params)
        with _unavailable():
            return self._conn.execute(_pg_sql(sql), checked)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> Cursor:
        checked = [_checked(r) for r in rows]
        with _unavailable():
            cur = self._conn.cursor()
            cur.executemany(_pg_sql(sql), checked)
            return cur


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - checked here so the message names both
    except ImportError as exc:  # optional: only a hub on PostgreSQL needs it
        raise FatalError(
            "gallery on PostgreSQL needs psycopg 3 and psycopg_pool: pip install 'face-agent[postgres]'"
        ) from exc
    return psycopg


@contextmanager
def _unavailable() -> Iterator[None]:
    """psycopg's errors as the agent's: a value the server cannot hold is the caller's InputError (400);
    a lost connection, a restarting server, a lock or statement timeout is a TransientError (503). The
    driver's text names hosts and users, so it goes to the log, not to the API's caller."""
    psycopg = _psycopg()
    try:
        yield
    except psycopg.errors.ProgramLimitExceeded as exc:  # e.g. an index row over 2704 bytes
        raise InputError("a value is too long for the gallery database", code="value_too_long") from exc
    except psycopg.DataError as exc:  # a value the column cannot hold (encoding, range)
        raise InputError("a value the gallery database cannot store", code="invalid_value") from exc
    except psycopg.OperationalError as exc:  # connection lost, server restarting, lock or statement timeout
        log.warning("gallery database unavailable: %s", str(exc).strip())
        raise TransientError("gallery database unavailable", code="database_unavailable") from exc


class PostgresDb:
    """A connection pool; every write transaction holds WRITE_LOCK_KEY (see the module docstring)."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int, timeout_s: float, connect: bool = True) -> None:
        psycopg = _psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.integrity_errors = (psycopg.IntegrityError,)
        ms = int(timeout_s * 1000)
        stalled = max(ms, 30_000)  # the longest a statement may run, or a transaction may sit idle
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout_s,
            open=False,
            name="gallery",
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(timeout_s)),
                # Every wait bounded: a lock (the write lock included), a statement, and a transaction a
                # vanished hub left open (the server ends it and frees the write lock it held).
                "options": f"-c lock_timeout={ms} -c statement_timeout={stalled}"
                f" -c idle_in_transaction_session_timeout={stalled}",
                # A server or network that vanished mid-query: TCP gives up after this, not after ~15 min
                # of retransmissions; keepalives find a dead peer on an idle connection.
                "tcp_user_timeout": stalled,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "application_name": "face-agent",
            },
        )
        if connect:
            self.open(timeout_s)

    def open(self, timeout_s: float) -> None:
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except Exception as exc:  # PoolTimeout: nothing answered; the reason is in the pool's log
            with contextlib.suppress(Exception):
                self._pool.close(timeout=1.0)  # its reconnect threads would go on trying
            raise FatalError(f"cannot connect to the gallery database {masked(self.url)}: {exc}") from exc

    def describe(self) -> str:
        return masked(self.url)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with _unavailable(), self._pool.connection() as conn:
            yield conn

    def schema_version(self) -> int:
        """0 for a database this agent never migrated (`face-agent hub migrate` creates the schema)."""
        if not self.query("SELECT to_regclass('face_agent_schema') IS NOT NULL")[0][0]:
            return 0
        rows = self.query("SELECT version FROM face_agent_schema")
        return int(rows[0][0]) if rows else 0

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield _PgConn(conn)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._connection() as conn:
            return _PgConn(conn).execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """One statement in its own transaction, without the write lock (never a feed write); rowcount."""
        with self._connection() as conn:
            return int(_PgConn(conn).execute(sql, params).rowcount)

    @contextmanager
    def reader(self) -> Iterator[Conn]:
        """One REPEATABLE READ, READ ONLY transaction: every statement sees the same committed snapshot.
        Begun by one statement (conn.transaction() would need a second to set the isolation level)."""
        with self._connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield _PgConn(conn)
            except BaseException:
                with contextlib.suppress(Exception):  # a broken connection: the pool discards it
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def scrub(self) -> bool:
        """PostgreSQL keeps a deleted row's bytes until VACUUM reuses the page (autovacuum does it;
        docs/hub.md says how to force it). Nothing to do per delete."""
        return True

    def vacuum_full(self, tables: Sequence[str], timeout_s: float = 600.0) -> None:
        """Rewrite tables so deleted rows' bytes leave the data files (erasure). On its own connection:
        VACUUM cannot run in a transaction, and it may take longer than the pool's statement timeout. It
        locks each table exclusively while it runs (hub requests on it wait, then get 503)."""
        psycopg = _psycopg()
        ms = int(timeout_s * 1000)
        with _unavailable(), psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"SET statement_timeout = {ms}")
            conn.execute(f"SET lock_timeout = {ms}")
            for table in tables:
                if not re.fullmatch(r"[a-z_]+", table):
                    raise ValueError(f"not a table name: {table!r}")
                conn.execute(f"VACUUM (FULL) {table}")

    def feed_counter(self) -> int:
        """The highest visible sequence number. Not the sequence's own counter: that counts numbers drawn
        by transactions still open, and a poller that took it would skip their operations once they
        commit. The write lock keeps what is visible a prefix, so nothing below this is still to come."""
        rows = self.query("SELECT COALESCE(MAX(seq), 0) FROM feed")
        return int(rows[0][0])

    def feed_drawn(self) -> int:
        """Sequence numbers drawn so far, committed or not (doctor's lag: drawn minus visible)."""
        rows = self.query("SELECT last_value, is_called FROM feed_seq_seq")
        return int(rows[0][0]) if rows and rows[0][1] else 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close(timeout=5.0)
