"""The replay cache: each signed request is accepted once, also across a restart of the server.

A signature only needs remembering until its own signed time plus `signature_max_age_s`: after that the
timestamp check refuses it anyway. So every accepted signature is stored with that expiry, rows past it are
pruned on each check, and at most `replay_cache_size` live ones are kept (when full, new signed requests get
the rate-limit answer rather than letting a replay through or growing without bound).

Two ways to survive a restart were weighed: refusing every request signed before the process started, or
keeping the cache in a file. The first alone also refuses honest clients whose clocks run behind the device's
(any skew up to the 300 s window is otherwise accepted) for that long after each restart, so the cache is
kept in a small SQLite file in the state directory (`ApiConfig.replay_store`, WAL, synchronous=NORMAL: no
fsync per request). The cut-off is the fallback where the file cannot vouch for the past:

- without a store (library use, `serve` configs without one), nothing was kept;
- a new store (first start, or the file was deleted) has no past to vouch for;
- after a reboot (the kernel's boot id differs from the one stored): synchronous=NORMAL may lose the last
  commits on power loss, which is exactly when a replayer would strike;
- when the store was unreadable and had to be recreated.

In those cases requests signed before this cache opened (to the whole second: JD Cloud's date has no
fraction) are refused as stale; a client signing at send time only notices if its clock lags the device's.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from pathlib import Path

from agent.api.common import ApiError
from agent.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen (signature TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def boot_id(path: Path = BOOT_ID) -> str | None:
    """This boot's id (Linux); None where the kernel does not say, which counts as a new boot."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class ReplayCache:
    """Signatures accepted within their validity window; `path` None keeps them in memory only."""

    def __init__(self, size: int, window_s: float, path: Path | None = None) -> None:
        self._size, self._window = size, window_s
        self._lock = threading.Lock()
        self._closed = False
        self._db, recreated = _open(path)
        same_boot = path is not None and self._record_boot()
        # Whole seconds: a JD Cloud date signed in the start second must not look older than the start.
        self.not_before = 0.0 if same_boot and not recreated else float(math.floor(time.time()))
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE expires < ?", (time.time(),))
            self._count = int(self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])

    def _record_boot(self) -> bool:
        """Store this boot's id; whether the store was last written during this same boot."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'boot_id'").fetchone()
        current = boot_id()
        if current is not None:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (current,))
        return current is not None and row is not None and row[0] == current

    def check_and_add(self, signature: str, signed_at: float) -> None:
        """Accept `signature` (signed at `signed_at`, epoch seconds, already checked to be fresh) once."""
        if signed_at < self.not_before:
            raise ApiError(
                "auth_stale", "signed before the server started and the replay cache cannot vouch for it"
            )
        with self._lock:
            if self._closed:  # a handler outliving ApiServer.stop()
                raise TransientError("the server is stopping", code="unavailable")
            self._count -= self._db.execute("DELETE FROM seen WHERE expires < ?", (time.time(),)).rowcount
            if self._db.execute("SELECT 1 FROM seen WHERE signature = ?", (signature,)).fetchone():
                raise ApiError("auth_replayed", "this signature was already used")
            if self._count >= self._size:
                raise ApiError("busy", "too many signed requests in the validity window")
            self._db.execute("INSERT INTO seen VALUES (?, ?)", (signature, signed_at + self._window))
            self._count += 1

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()


def _connect(path: Path | None) -> sqlite3.Connection:
    # One connection shared by the handler threads, serialised by the cache's lock; autocommit.
    db = sqlite3.connect(
        ":memory:" if path is None else str(path), timeout=5.0, check_same_thread=False, isolation_level=None
    )
    try:
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            db.execute(statement)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _open(path: Path | None) -> tuple[sqlite3.Connection, bool]:
    """The connection, and whether an unreadable store was replaced by an empty one."""
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return _connect(path), False
    except (OSError, sqlite3.OperationalError) as exc:  # cannot create, open or lock it: said at start
        raise ConfigError(f"api.replay_store {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        # Not a database (or corrupt): its content is worth nothing next to the service running on, and
        # the start-time cut-off covers what it would have remembered.
        assert path is not None
        log.warning("replay store %s is unreadable (%s); starting an empty one", path, exc)
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        return _connect(path), True


class SharedReplayCache:
    """Used signatures in a database every hub process shares (PostgreSQL, hub.database): a request
    accepted by one process is refused as a replay by all the others behind the same load balancer.

    One `INSERT ... ON CONFLICT DO NOTHING` per request decides atomically across processes; it does not
    take the gallery's write lock (it is not a feed write). The database is durable per commit, so a
    restarted process needs no start-time cut-off (`not_before` 0). Expired rows are pruned at most once a
    second; `size` bounds the live rows per process as ReplayCache does (counted at each prune)."""

    not_before = 0.0

    def __init__(self, db: object, size: int, window_s: float, namespace: str) -> None:
        self._db = db  # agent.gallery.db.PostgresDb (execute / query)
        self._size, self._window = size, window_s
        self._ns = namespace + ":"  # the API's and the hub's devices' signatures apart
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        self._count = 0
        self._closed = False

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM used_signatures WHERE expires < ?", (now,))  # type: ignore[attr-defined]
        self._count = int(self._db.query("SELECT COUNT(*) FROM used_signatures")[0][0])  # type: ignore[attr-defined]
        self._pruned_at = now

    def check_and_add(self, signature: str, signed_at: float) -> None:
        now = time.time()
        with self._lock:
            if self._closed:
                raise TransientError("the server is stopping", code="unavailable")
            if now - self._pruned_at >= 1.0:
                self._prune(now)
            if self._count >= self._size:
                raise ApiError("busy", "too many signed requests in the validity window")
            added = self._db.execute(  # type: ignore[attr-defined]
                "INSERT INTO used_signatures (digest, expires) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (self._ns + signature, signed_at + self._window),
            )
            if added == 0:
                raise ApiError("auth_replayed", "this signature was already used")
            self._count += 1

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        with self._lock:
            self._closed = True  # the database belongs to the gallery store, which closes it


def shared_replays(config: object, gallery: object, namespace: str) -> SharedReplayCache | None:
    """The shared store when the gallery lives in a database other processes use (hub.database), else None
    (each process keeps its own file)."""
    store = getattr(gallery, "store", None)
    if store is None or not getattr(store, "shared", False):
        return None
    return SharedReplayCache(
        store.db,
        config.replay_cache_size,
        config.signature_max_age_s,
        namespace,  # type: ignore[attr-defined]
    )
