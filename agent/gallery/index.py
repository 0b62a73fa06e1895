"""One hnswlib cosine index per (group, model), kept in step with the SQLite store.

Life of an index:
- open: load the saved file if its sidecar matches (checksum, parameters); if the sidecar says the file
  reflects an older SQLite state (fingerprint differs), reconcile it against SQLite (add missing faces, delete
  extra ones); if the file is missing or corrupt, build it from SQLite. Loading and building run off-thread;
  searches wait (bounded) for `ready`.
- writes: the gallery commits to SQLite first and then applies the change here, holding the gallery-wide
  `mutation_lock` across both, so SQLite and the index never disagree for an observer holding that lock.
- rebuild (compaction, corrupt file): a new index is built off-thread from a SQLite snapshot, then reconciled
  with whatever was written meanwhile (under `mutation_lock`) and swapped in under the write lock, so readers
  see the old index or the new one, never a half-built one.
- save: write temp + fsync + rename, then the same for a JSON sidecar holding the file's SHA-256 and the
  SQLite fingerprint it reflects.

hnswlib's add_items and resize_index are not safe to run during knn_query, hence the reader-writer lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hnswlib
import numpy as np

from agent.errors import FatalError, InputError, TransientError
from agent.gallery.config import GalleryConfig
from agent.gallery.store import GalleryStore

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
_HASH_CHUNK = 8 << 20


class RWLock:
    """Many readers or one writer; waiting writers go first so a stream of searches cannot starve them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self, timeout: float) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writer and not self._writers_waiting, timeout):
                raise TransientError("gallery index busy", code="index_busy")
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self, timeout: float) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                ok = self._cond.wait_for(lambda: not self._writer and not self._readers, timeout)
            finally:
                self._writers_waiting -= 1
            if not ok:
                self._cond.notify_all()
                raise TransientError("gallery index busy", code="index_busy")
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def index_paths(directory: Path, group_id: str, model_id: str) -> tuple[Path, Path]:
    """File names derived from a hash, since group and model ids may hold any Unicode or a '/'."""
    key = hashlib.sha256(f"{group_id}\x00{model_id}".encode()).hexdigest()[:32]
    return directory / f"{key}.hnsw", directory / f"{key}.json"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256_and_fsync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb+") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HnswIndex:
    """The searchable index of one (group, model). Thread-safe; see the module docstring for the protocol."""

    def __init__(
        self,
        store: GalleryStore,
        config: GalleryConfig,
        group_id: str,
        model_id: str,
        dim: int,
        *,
        mutation_lock: threading.Lock,
        build_slots: threading.Semaphore,
    ) -> None:
        self.group_id, self.model_id, self.dim = group_id, model_id, dim
        self._store, self._cfg = store, config
        self._mutation, self._slots = mutation_lock, build_slots
        self._dir = config.path / "indexes"
        self.file, self.sidecar = index_paths(self._dir, group_id, model_id)
        self._rw = RWLock()
        self._save_lock = threading.Lock()
        self._index: hnswlib.Index | None = None
        self._deleted = 0  # marked-deleted slots in the current index
        self._dirty = False
        self._ready = threading.Event()
        self._builder: threading.Thread | None = None
        self._closing = False
        self.failure: str | None = None
        self.load_status = "pending"  # then: fresh | reconciled | built (<reason>) | rebuilt (<reason>)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start_empty(self) -> None:
        """A brand-new (group, model): nothing to load, ready at once."""
        self._index = self._new_index(self._cfg.initial_capacity)
        self.load_status = "fresh"
        self._ready.set()

    def start(self) -> None:
        """Load or build off-thread; searches wait for `ready` meanwhile."""
        self._spawn(self._load_or_build, "load")

    def rebuild(self, reason: str = "requested") -> bool:
        """Build a fresh index from SQLite off-thread and swap it in; False if a build is already running."""
        return self._spawn(lambda: self._rebuild(reason), "rebuild")

    def _spawn(self, target, what: str) -> bool:
        if self._builder is not None and self._builder.is_alive():
            return False
        name = f"gallery-{what}-{self.file.stem[:8]}"
        self._builder = threading.Thread(target=self._guarded, args=(target,), name=name, daemon=True)
        self._builder.start()
        return True

    def _guarded(self, target) -> None:
        try:
            with self._slots:
                target()
        except Exception as exc:  # a failed build must be visible to searches, not die silently in a thread
            log.exception("gallery index %s/%s failed", self.group_id, self.model_id)
            self.failure = f"{type(exc).__name__}: {exc}"
            self._ready.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for a running load/build; True if none is running afterwards."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
            return not builder.is_alive()
        return True

    def close(self, timeout: float) -> None:
        self._closing = True
        if self.wait_idle(timeout):
            self.save()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._index is not None

    def stats(self) -> dict[str, int]:
        idx = self._index
        elements = idx.element_count if idx is not None else 0
        return {"elements": elements, "deleted": self._deleted, "live": elements - self._deleted}

    # -- load / build ------------------------------------------------------------------------------------

    def _new_index(self, capacity: int) -> hnswlib.Index:
        idx = hnswlib.Index(space="cosine", dim=self.dim)
        idx.init_index(max_elements=capacity, M=self._cfg.hnsw_m, ef_construction=self._cfg.ef_construction)
        idx.set_ef(self._cfg.ef_search)
        return idx

    def _capacity_for(self, n: int) -> int:
        if n > self._cfg.max_elements:
            raise FatalError(f"{n} faces exceed gallery max_elements={self._cfg.max_elements}")
        wanted = max(self._cfg.initial_capacity, int(n * self._cfg.growth_factor) + 1)
        return min(wanted, self._cfg.max_elements)

    def _load_or_build(self) -> None:
        loaded, reason = self._try_load()
        if loaded is None:
            log.info("gallery index %s/%s: building from SQLite (%s)", self.group_id, self.model_id, reason)
            self._rebuild(reason, first=True)
            return
        idx, meta = loaded
        self._finish(idx, int(meta["deleted"]), "reconciled", expect=tuple(meta["fingerprint"]))

    def _try_load(self) -> tuple[tuple[hnswlib.Index, dict] | None, str]:
        """The saved index if it is intact and built with today's parameters, else (None, why not)."""
        if not self.file.exists() or not self.sidecar.exists():
            return None, "missing"
        try:
            meta = json.loads(self.sidecar.read_text(encoding="utf-8"))
            expected = {
                "format": SIDECAR_FORMAT,
                "group_id": self.group_id,
                "model_id": self.model_id,
                "dim": self.dim,
                "M": self._cfg.hnsw_m,
                "ef_construction": self._cfg.ef_construction,
            }
            if any(meta.get(k) != v for k, v in expected.items()):
                return None, "parameters changed"
            if meta["file_size"] != self.file.stat().st_size or meta["sha256"] != _file_sha256(self.file):
                return None, "corrupt (checksum)"
            idx = hnswlib.Index(space="cosine", dim=self.dim)
            idx.load_index(str(self.file), max_elements=self._capacity_for(int(meta["elements"])))
            if idx.element_count != int(meta["elements"]):
                return None, "corrupt (element count)"
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, FatalError) as exc:
            return None, f"corrupt ({type(exc).__name__}: {exc})"
        idx.set_ef(self._cfg.ef_search)
        return (idx, meta), "ok"

    def _rebuild(self, reason: str, first: bool = False) -> None:
        n = self._store.fingerprint(self.group_id, self.model_id)[0]
        idx = self._new_index(self._capacity_for(n))
        threads = self._cfg.build_threads
        for labels, vectors in self._store.iter_vectors(self.group_id, self.model_id, self.dim):
            if self._closing:
                return
            self._grow(idx, len(labels))
            idx.add_items(vectors, labels, num_threads=threads)
        self._finish(idx, 0, f"{'built' if first else 'rebuilt'} ({reason})")

    def _finish(self, idx: hnswlib.Index, deleted: int, status: str, expect: tuple | None = None) -> None:
        """Catch up with writes made since the snapshot (or since the file was saved), then swap it in.

        `expect` is the fingerprint a loaded file reflects: if SQLite still has it, the file is fresh.
        Checked under the mutation lock, so no write can slip in between the check and the swap. A
        database shared by several processes (PostgreSQL) is always reconciled: the others write without
        this process's lock, so a saved file can lack faces its fingerprint already counts."""
        if not self._mutation.acquire(timeout=self._cfg.lock_timeout_s):
            raise TransientError(
                "gallery write lock busy while finishing an index build", code="gallery_busy"
            )
        try:
            if (
                expect is not None
                and not self._store.shared
                and self._store.fingerprint(self.group_id, self.model_id) == expect
            ):
                status = "fresh"
            else:
                deleted += self._reconcile(idx)
            with self._rw.write(self._cfg.lock_timeout_s):
                self._index, self._deleted = idx, deleted
                self._dirty = status != "fresh"
                self.load_status = status
                self.failure = None
                self._ready.set()
        finally:
            self._mutation.release()
        log.info("gallery index %s/%s ready: %s, %s", self.group_id, self.model_id, status, self.stats())

    def _reconcile(self, idx: hnswlib.Index) -> int:
        """Make idx hold exactly SQLite's faces; returns how many slots it newly marked deleted.

        Exact because labels are never reused and SQLite commits before the index changes: a label missing
        from the index is a new face, a label missing from SQLite is a deleted one."""
        in_db = self._store.labels(self.group_id, self.model_id)
        in_index = np.asarray(idx.get_ids_list(), dtype=np.int64)
        missing = np.setdiff1d(in_db, in_index, assume_unique=True)
        for start in range(0, len(missing), 10_000):
            labels, vectors = self._store.vectors(missing[start : start + 10_000], self.dim)
            self._grow(idx, len(labels))
            idx.add_items(vectors, labels, num_threads=self._cfg.build_threads)
        newly_deleted = 0
        for label in np.setdiff1d(in_index, in_db, assume_unique=True):
            newly_deleted += self._scrub(idx, int(label))
        if len(missing) or newly_deleted:
            log.info(
                "gallery index %s/%s reconciled: +%d, -%d",
                self.group_id,
                self.model_id,
                len(missing),
                newly_deleted,
            )
        return newly_deleted

    def follow(self) -> tuple[int, int]:
        """Take in what other processes changed in the database (hub processes sharing PostgreSQL); the
        caller holds the mutation lock. The difference is read first and applied under the write lock
        only, so searches wait for the hnswlib update, not for the queries. (added, removed)."""
        idx = self._index
        if idx is None:
            return 0, 0  # a load or build is running: its reconcile step reads the database anyway
        in_db = self._store.labels(self.group_id, self.model_id)
        in_index = np.asarray(idx.get_ids_list(), dtype=np.int64)
        missing = np.setdiff1d(in_db, in_index, assume_unique=True)
        extra = np.setdiff1d(in_index, in_db, assume_unique=True)
        if not len(missing) and not len(extra):
            return 0, 0
        labels, vectors = self._store.vectors(missing.tolist(), self.dim)
        with self._rw.write(self._cfg.lock_timeout_s):
            if self._index is not idx:
                return 0, 0  # a rebuild swapped in a newer index meanwhile; it reconciled itself
            if len(labels):
                self._grow(idx, len(labels))
                idx.add_items(vectors, labels, num_threads=1)
            removed = sum(self._scrub(idx, int(label)) for label in extra)
            self._deleted += removed
            self._dirty = True
        return len(labels), removed

    # -- writes (caller holds mutation_lock and has committed to SQLite) ---------------------------------

    def check_room(self, n: int) -> None:
        """Refuse an enrolment that would overflow max_elements before anything is committed."""
        idx = self._index
        used = (
            idx.element_count if idx is not None else self._store.fingerprint(self.group_id, self.model_id)[0]
        )
        if used + n > self._cfg.max_elements:
            raise InputError(
                f"index {self.group_id}/{self.model_id} is full ({used} of {self._cfg.max_elements} slots)",
                code="gallery_full",
            )

    def add(self, labels: np.ndarray, vectors: np.ndarray, threads: int = 1) -> None:
        if self._index is None:
            return  # a load/build is running; its reconcile step picks these faces up from SQLite
        with self._rw.write(self._cfg.lock_timeout_s):
            self._grow(self._index, len(labels))
            self._index.add_items(
                np.asarray(vectors, dtype=np.float32), np.asarray(labels), num_threads=threads
            )
            self._dirty = True

    def remove(self, labels: list[int]) -> None:
        if self._index is None:
            return
        with self._rw.write(self._cfg.lock_timeout_s):
            for label in labels:
                self._deleted += self._scrub(self._index, label)
            self._dirty = True
        stats = self.stats()
        if stats["elements"] and stats["deleted"] / stats["elements"] > self._cfg.compact_deleted_ratio:
            self.rebuild("compaction")

    @staticmethod
    def _scrub(idx: hnswlib.Index, label: int) -> int:
        """Overwrite the embedding with noise and mark the slot deleted: it leaves search at once and the
        biometric vector leaves memory (and the next saved file). Returns 1 if a live slot was deleted."""
        noise = np.random.default_rng(label).standard_normal((1, idx.dim)).astype(np.float32)
        try:
            idx.mark_deleted(label)
        except RuntimeError:  # already deleted, or never indexed
            return 0
        idx.add_items(noise / np.linalg.norm(noise), [label], num_threads=1)  # updating un-deletes it...
        idx.mark_deleted(label)  # ...so delete again; readers are excluded for the whole sequence
        return 1

    def _grow(self, idx: hnswlib.Index, n: int) -> None:
        needed = idx.element_count + n
        if needed <= idx.max_elements:
            return
        if needed > self._cfg.max_elements:
            raise InputError(f"index {self.group_id}/{self.model_id} is full", code="gallery_full")
        new_cap = min(self._cfg.max_elements, max(needed, int(idx.max_elements * self._cfg.growth_factor)))
        idx.resize_index(new_cap)

    # -- search ------------------------------------------------------------------------------------------

    def wait_ready(self) -> None:
        """Wait (bounded) for a load or first build; Gallery.search does it before taking its view lock."""
        if not self._ready.wait(self._cfg.ready_timeout_s):
            raise TransientError(
                f"index {self.group_id}/{self.model_id} is still loading", code="index_not_ready"
            )

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels and cosine similarities for each row; fewer columns when fewer faces exist."""
        self.wait_ready()
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query must have dimension {self.dim}", code="embedding_dim_mismatch")
        with self._rw.read(self._cfg.lock_timeout_s):
            idx = self._index
            if idx is None:  # only after a failed first load; a failed rebuild keeps serving the old index
                raise FatalError(f"index {self.group_id}/{self.model_id} failed to build: {self.failure}")
            k = min(k, idx.element_count - self._deleted)
            while k > 0:
                try:
                    labels, dist = idx.knn_query(queries, k=k, num_threads=1)
                    return labels.astype(np.int64), np.clip(1.0 - dist, -1.0, 1.0)
                except RuntimeError:  # many deleted slots can leave fewer than k reachable: ask for fewer
                    k //= 2
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.int64), empty.astype(np.float32)

    # -- persistence -------------------------------------------------------------------------------------

    def save(self) -> bool:
        """Persist if changed. Holds the mutation lock while writing so the file matches the fingerprint."""
        if not self.ready or not self._dirty:
            return False
        # A failure before the try below must not keep the mutation lock: nothing can fail in between.
        # Lock order: the mutation lock, then the save lock, as discard() takes them (it runs under the
        # mutation lock of a group delete or a mirror erase); the other order stalled both for lock_timeout_s.
        if not self._mutation.acquire(timeout=self._cfg.lock_timeout_s):
            raise TransientError("gallery write lock busy, index not saved", code="gallery_busy")
        with self._save_lock:
            tmp_file, tmp_meta = self.file.with_suffix(".hnsw.tmp"), self.sidecar.with_suffix(".json.tmp")
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                fingerprint = self._store.fingerprint(self.group_id, self.model_id)
                with self._rw.read(self._cfg.lock_timeout_s):
                    self._index.save_index(str(tmp_file))
                    elements, deleted = self._index.element_count, self._deleted
                    self._dirty = False
            finally:
                self._mutation.release()
            meta = {
                "format": SIDECAR_FORMAT,
                "group_id": self.group_id,
                "model_id": self.model_id,
                "dim": self.dim,
                "space": "cosine",
                "M": self._cfg.hnsw_m,
                "ef_construction": self._cfg.ef_construction,
                "fingerprint": list(fingerprint),
                "elements": elements,
                "deleted": deleted,
                "file_size": tmp_file.stat().st_size,
                "sha256": _sha256_and_fsync(tmp_file),
                "saved_at": time.time(),
            }
            _fsync_write(tmp_meta, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            # A crash between the two renames leaves a checksum mismatch, which means a rebuild, not bad data.
            os.replace(tmp_file, self.file)
            os.replace(tmp_meta, self.sidecar)
            _fsync_dir(self._dir)
        return True

    def discard(self) -> None:
        """Forget this index (its group was deleted): stop a running build, delete its files unsaved."""
        self._closing = True
        with self._save_lock:
            for path in (self.file, self.sidecar):
                path.unlink(missing_ok=True)
