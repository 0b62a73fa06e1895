"""The gallery: one SQLite store plus one hnswlib index per (group, model), behind one object.

Every write takes the gallery-wide mutation lock, commits to SQLite (fsynced), then updates the index, so
when a write returns its face is durable and searchable, and a deleted face is gone from both.

A page of a hub's feed (mirror.py) is applied under the write side of a view lock that every search holds
for reading, across the SQLite commit and the index update: a search sees the page entirely or not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from agent.errors import InputError, TransientError
from agent.gallery.config import GalleryConfig
from agent.gallery.index import HnswIndex, RWLock
from agent.gallery.mirror import Changes
from agent.gallery.store import (
    FACE_ADDED,
    FACE_DELETED,
    FACE_UPDATED,
    GROUP_DELETED,
    PERSON_DELETED,
    FaceRecord,
    GalleryStore,
    GroupRecord,
    NewFace,
    PersonRecord,
    RemovedFace,
    check_vector,
)

log = logging.getLogger(__name__)

# Feed operations after which the follower reconciles a group with the database (they remove faces or
# change vectors, and the feed names faces by id, not by index label), and its batch per round.
_RECONCILE_OPS = frozenset({FACE_DELETED, FACE_UPDATED, PERSON_DELETED, GROUP_DELETED})
_FOLLOW_BATCH = 5000
_OWN_MAX = 100_000


class Gallery:
    def __init__(self, config: GalleryConfig) -> None:
        self.config = config
        self.store = GalleryStore(config)
        self._mutation = threading.Lock()
        self._view = RWLock()
        self._slots = threading.Semaphore(config.max_parallel_builds)
        self._indexes: dict[tuple[str, str], HnswIndex] = {}
        self._stop = threading.Event()
        # Read before the indexes load: whatever commits after it is followed, and following is idempotent.
        self._followed = self._feed_top() if self.store.shared else 0
        self._own: set[str] = set()  # faces this process enrolled and the follower has not seen yet
        self._lagging: set[str] = set()  # groups whose last follow failed: reconciled every round
        for group_id, model_id, dim in self.store.index_keys():
            self._make_index(group_id, model_id, dim).start()
        self._saver: threading.Thread | None = None
        if config.save_interval_s > 0:
            self._saver = threading.Thread(target=self._save_loop, name="gallery-saver", daemon=True)
            self._saver.start()
        self._follower: threading.Thread | None = None
        if self.store.shared:
            self._follower = threading.Thread(target=self._follow_loop, name="gallery-follow", daemon=True)
            self._follower.start()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def close(self, timeout: float = 60.0) -> None:
        """Stop the saver, let running builds finish (bounded), save changed indexes, close SQLite."""
        self._stop.set()
        for thread in (self._saver, self._follower):
            if thread is not None:
                thread.join(timeout)
        for idx in list(self._indexes.values()):
            idx.close(timeout)
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> bool:
        """True once every index is loaded or built (e.g. before declaring the service ready)."""
        return all(idx.wait_idle(timeout) and idx.ready for idx in list(self._indexes.values()))

    def save(self) -> int:
        """Save every changed index now; returns how many were written."""
        return sum(idx.save() for idx in list(self._indexes.values()))

    def _save_loop(self) -> None:
        while not self._stop.wait(self.config.save_interval_s):
            for idx in list(self._indexes.values()):
                try:
                    idx.save()
                except (TransientError, OSError) as exc:  # retried at the next interval
                    log.warning("saving gallery index %s/%s failed: %s", idx.group_id, idx.model_id, exc)

    # -- other processes' writes (hub processes on one PostgreSQL database) ---------------------------------

    def _feed_top(self) -> int:
        return int(self.store.read("SELECT COALESCE(MAX(seq), 0) FROM feed")[0][0])

    def _follow_loop(self) -> None:
        while not self._stop.wait(self.config.follow_interval_s):
            try:
                self.follow()
            except (TransientError, InputError) as exc:  # database away, lock busy: the next round retries
                log.warning("gallery: following other processes' writes failed: %s", exc)
            except Exception:  # a bug must not end following for good: logged, and the next round retries
                log.exception("gallery: following other processes' writes failed")

    def follow(self) -> int:
        """Bring the indexes in step with writes other processes committed since the last round, from the
        change feed (every write appends to it, and with the write lock what readers see of it is a
        prefix). Enrolments are replayed: the new faces are read by id and added. A group with a deletion
        or a re-embedding (whose labels the feed does not carry), a burst, or ops compaction dropped
        unseen is reconciled with the database instead; new groups get an index, emptied ones lose it.
        Returns the faces added plus removed."""
        rows = self.store.read(
            "SELECT seq, group_id, op, key FROM feed WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._followed, _FOLLOW_BATCH),
        )
        top = int(rows[-1][0]) if rows else self._followed
        full = {str(g) for _, g, op, _ in rows if op in _RECONCILE_OPS} | self._lagging
        if len(rows) == _FOLLOW_BATCH:
            full |= {str(g) for _, g, _, _ in rows}
        floor = self.store.read("SELECT value FROM meta WHERE name = 'feed_floor'")
        if floor and int(floor[0][0]) > self._followed:  # compaction dropped ops this process never saw
            full |= {g.group_id for g in self.store.list_groups()} | {g for g, _ in self._indexes}
            top = max(top, int(floor[0][0]))
        moved = 0
        with self._writing():
            # Under the write lock: an add_faces whose rows this read saw has finished and noted them in
            # _own (it commits and notes them while holding the lock).
            new: list[str] = []
            for _, gid, op, key in rows:
                if op == FACE_ADDED and gid not in full and key not in self._own:
                    new.append(str(key))
                self._own.discard(key)
            if full:
                moved += self._reconcile_groups(full)
            if new:
                moved += self._add_followed(new)
        self._followed = top
        if moved:
            log.info("gallery: %d face(s) added or removed by other processes taken in", moved)
        return moved

    def _reconcile_groups(self, groups: set[str]) -> int:
        """Each group on its own: one that fails (a full index, say) is retried every round until it
        succeeds, and does not hold back the others."""
        keys = [(g, m, d) for g, m, d in self.store.index_keys() if g in groups]
        moved = 0
        self._lagging -= groups
        for group_id, model_id, dim in keys:
            idx = self._indexes.get((group_id, model_id))
            if idx is None:
                self._make_index(group_id, model_id, dim).start()
                continue
            try:
                added, removed = idx.follow()
            except InputError as exc:  # gallery_full: this process cannot hold the others' faces
                self._lagging.add(group_id)
                log.error("gallery: %s/%s cannot follow the database: %s", group_id, model_id, exc)
                continue
            moved += added + removed
        live = {(g, m) for g, m, _ in keys}
        for key in [k for k in self._indexes if k[0] in groups and k not in live]:
            self._indexes.pop(key).discard()
        return moved

    def _add_followed(self, face_ids: list[str]) -> int:
        """Faces other processes enrolled, by id (a face deleted since is simply not found)."""
        per_index: dict[tuple[str, str, int], list[tuple[int, bytes]]] = {}
        for start in range(0, len(face_ids), 500):
            part = face_ids[start : start + 500]
            sql = (
                "SELECT label, group_id, model_id, dim, embedding FROM faces"
                f" WHERE face_id IN ({','.join('?' * len(part))})"
            )
            for label, gid, model, dim, emb in self.store.read(sql, part):
                per_index.setdefault((gid, model, int(dim)), []).append((int(label), bytes(emb)))
        added = 0
        for (gid, model, dim), got in per_index.items():
            idx = self._indexes.get((gid, model))
            if idx is None:  # a new (group, model): built from the database, which has these faces
                self._make_index(gid, model, dim).start()
                continue
            labels = np.asarray([lb for lb, _ in got], dtype=np.int64)
            raw = np.frombuffer(b"".join(e for _, e in got), dtype="<f4").reshape(len(got), dim)
            vectors = raw.astype(np.float32)
            try:
                idx.check_room(len(got))
            except InputError as exc:
                self._lagging.add(gid)  # reconciled next round, when there may be room again
                log.error("gallery: %s/%s cannot take in others' faces: %s", gid, model, exc)
                continue
            self._apply(idx, lambda i=idx, lb=labels, v=vectors: i.add(lb, v))
            added += len(got)
        return added

    def index(self, group_id: str, model_id: str) -> HnswIndex | None:
        return self._indexes.get((group_id, model_id))

    def _make_index(self, group_id: str, model_id: str, dim: int) -> HnswIndex:
        idx = HnswIndex(
            self.store,
            self.config,
            group_id,
            model_id,
            dim,
            mutation_lock=self._mutation,
            build_slots=self._slots,
        )
        self._indexes[(group_id, model_id)] = idx
        return idx

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if not self._mutation.acquire(timeout=self.config.lock_timeout_s):
            raise TransientError("gallery is busy (index save or build in progress)", code="gallery_busy")
        try:
            yield
        finally:
            self._mutation.release()

    def _unindex(self, removed: Sequence[RemovedFace]) -> None:
        by_index: dict[tuple[str, str], list[int]] = {}
        for r in removed:
            by_index.setdefault((r.group_id, r.model_id), []).append(r.label)
        for key, labels in by_index.items():
            idx = self._indexes.get(key)
            if idx is not None:
                self._apply(idx, lambda i=idx, lb=labels: i.remove(lb))

    @staticmethod
    def _apply(idx: HnswIndex, change) -> None:
        """Apply a committed change to the index. SQLite already holds it, so on failure the index is rebuilt
        from SQLite rather than the caller being told a durable write failed (a retry would duplicate it)."""
        try:
            change()
        except Exception:
            log.exception(
                "gallery index %s/%s update failed; rebuilding from SQLite", idx.group_id, idx.model_id
            )
            idx.rebuild("update failed")

    # -- groups and persons ------------------------------------------------------------------------------

    def create_group(
        self, group_id: str | None = None, group_name: str | None = None, info: str = ""
    ) -> GroupRecord:
        return self.store.create_group(group_id, group_name, info)

    def update_group(
        self, group_id: str, group_name: str | None = None, info: str | None = None
    ) -> GroupRecord:
        return self.store.update_group(group_id, group_name, info)

    def get_group(self, group_id: str | None = None, group_name: str | None = None) -> GroupRecord:
        return self.store.get_group(group_id, group_name)

    def list_groups(self) -> list[GroupRecord]:
        return self.store.list_groups()

    def delete_group(self, group_id: str) -> int:
        """Delete a group with all its persons and faces; returns the number of faces removed."""
        with self._writing():
            removed = self.store.delete_group(group_id)
            for key in [k for k in self._indexes if k[0] == group_id]:
                idx = self._indexes.pop(key)
                idx.discard()
        return len(removed)

    def upsert_person(self, group_id: str, outer_id: str, user_info: str | None = None) -> PersonRecord:
        return self.store.upsert_person(group_id, outer_id, user_info)

    def get_person(self, group_id: str, outer_id: str) -> PersonRecord:
        return self.store.get_person(group_id, outer_id)

    def list_persons(self, group_id: str) -> list[PersonRecord]:
        return self.store.list_persons(group_id)

    def delete_person(self, group_id: str, outer_id: str) -> int:
        """Delete a person and all their faces from SQLite and from search; returns faces removed."""
        with self._writing():
            removed = self.store.delete_person(group_id, outer_id)
            self._unindex(removed)
        return len(removed)

    # -- faces -------------------------------------------------------------------------------------------

    def add_face(
        self,
        group_id: str,
        outer_id: str,
        vector: np.ndarray,
        model_id: str,
        *,
        quality: float | None = None,
        user_info: str | None = None,
        thumbnail: bytes | None = None,
    ) -> FaceRecord:
        face = NewFace(outer_id, vector, model_id, quality, user_info, thumbnail)
        return self.add_faces(group_id, [face])[0]

    def add_faces(self, group_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Enrol faces atomically. On return they are committed to disk and searchable."""
        per_model: dict[str, int] = {}
        for f in faces:
            per_model[f.model_id] = per_model.get(f.model_id, 0) + 1
        with self._writing():
            for model_id, count in per_model.items():
                idx = self._indexes.get((group_id, model_id))
                if idx is not None:
                    idx.check_room(count)
                elif count > self.config.max_elements:
                    raise InputError(f"{count} faces exceed max_elements", code="gallery_full")
            records = self.store.add_faces(group_id, faces)
            if self.store.shared:  # the follower skips them: they are in the index already
                if len(self._own) > _OWN_MAX:
                    self._own.clear()  # bounded; re-adding one of them only rewrites the same vector
                self._own.update(r.face_id for r in records)
            for model_id in per_model:
                rows = [(r, f) for r, f in zip(records, faces, strict=True) if r.model_id == model_id]
                idx = self._indexes.get((group_id, model_id))
                if idx is None:
                    idx = self._make_index(group_id, model_id, rows[0][0].dim)
                    idx.start_empty()
                labels = np.asarray([r.label for r, _ in rows], dtype=np.int64)
                vectors = np.stack([np.asarray(f.vector, dtype=np.float32) for _, f in rows])
                self._apply(idx, lambda i=idx, lb=labels, v=vectors: i.add(lb, v))
        return records

    def check_room(self, group_id: str, model_id: str, n: int) -> None:
        """Refuse (gallery_full) before committing `n` more faces to a (group, model) that has no room."""
        idx = self._indexes.get((group_id, model_id))
        if idx is not None:
            idx.check_room(n)
        elif n > self.config.max_elements:
            raise InputError(f"{n} faces exceed max_elements", code="gallery_full")

    def apply_mirror(
        self, group_id: str, apply: Callable[[], Changes], threads: int | None = None
    ) -> Changes:
        """Run one mirror.py transaction (`apply`) and bring the indexes in step, as one step for searches.
        `threads`: hnswlib threads for a large page (default gallery.build_threads)."""
        changes = self._apply_mirror(group_id, apply, threads or self.config.build_threads)
        if changes.removed:
            self.store.scrub_wal()  # deleted embeddings leave the WAL too
        return changes

    def _apply_mirror(self, group_id: str, apply: Callable[[], Changes], bulk_threads: int) -> Changes:
        with self._writing(), self._view.write(self.config.lock_timeout_s):
            changes = apply()
            if changes.group_deleted:
                for key in [k for k in self._indexes if k[0] == group_id]:
                    self._indexes.pop(key).discard()
                for gid in {r.group_id for r in changes.removed} - {group_id}:
                    for key in [k for k in self._indexes if k[0] == gid]:
                        self._indexes.pop(key).discard()
                return changes
            self._unindex(changes.removed)
            per_model: dict[str, list[tuple[int, np.ndarray]]] = {}
            for label, model_id, vec in changes.added:
                per_model.setdefault(model_id, []).append((label, vec))
            for model_id, rows in per_model.items():
                idx = self._indexes.get((group_id, model_id))
                if idx is None:
                    idx = self._make_index(group_id, model_id, rows[0][1].shape[0])
                    idx.start_empty()
                labels = np.asarray([lb for lb, _ in rows], dtype=np.int64)
                vectors = np.stack([v for _, v in rows]).astype(np.float32)
                threads = bulk_threads if len(rows) > 64 else 1
                self._apply(idx, lambda i=idx, lb=labels, v=vectors, t=threads: i.add(lb, v, threads=t))
        return changes

    def delete_face(self, face_id: str) -> None:
        with self._writing():
            self._unindex([self.store.delete_face(face_id)])

    def get_face(self, face_id: str) -> FaceRecord:
        return self.store.get_face(face_id)

    def get_embedding(self, face_id: str) -> np.ndarray:
        return self.store.get_embedding(face_id)

    def get_thumbnail(self, face_id: str) -> tuple[str, bytes] | None:
        return self.store.get_thumbnail(face_id)

    def faces_of_person(self, group_id: str, outer_id: str) -> list[FaceRecord]:
        return self.store.faces_of_person(group_id, outer_id)

    def list_faces(
        self, group_id: str, model_id: str | None = None, *, offset: int = 0, limit: int = 1000
    ) -> list[FaceRecord]:
        """A page of a group's faces in enrolment order (e.g. to re-embed thumbnails for a new model)."""
        return self.store.list_faces(group_id, model_id, offset=offset, limit=limit)

    # -- search ------------------------------------------------------------------------------------------

    def search(
        self, group_id: str, model_id: str, vectors: np.ndarray, k: int
    ) -> list[list[tuple[FaceRecord, float]]]:
        """Top-k enrolled faces per query row as (face, cosine), best first. Labels whose face was deleted
        meanwhile are filtered out by resolving them in SQLite."""
        queries = np.stack([check_vector(v) for v in np.atleast_2d(np.asarray(vectors, dtype=np.float32))])
        cfg = self.config
        if not 1 <= k <= (cfg.max_top_k + cfg.max_query_faces) * cfg.candidate_factor:
            raise InputError("k out of range", code="invalid_top_k")
        waiting = self._indexes.get((group_id, model_id))
        if waiting is not None:  # a long load is waited for outside the view lock, not inside it
            waiting.wait_ready()
        with self._view.read(cfg.lock_timeout_s):
            idx = self._indexes.get((group_id, model_id))
            if idx is None:
                self.store.get_group(group_id)  # unknown group -> group_not_found; known but empty -> no hits
                return [[] for _ in queries]
            labels, sims = idx.search(queries, k)
            faces = self.store.resolve(np.unique(labels).tolist())
        return [
            [
                (faces[lbl], float(s))
                for lbl, s in zip(row_l, row_s, strict=True)
                if lbl in faces and faces[lbl].group_id == group_id
            ]
            for row_l, row_s in zip(labels.tolist(), sims.tolist(), strict=True)
        ]
