"""The edge syncer: mirror the groups a hub grants this device into the local gallery.

One thread pulls; recognition never waits for it. Each page is applied in one SQLite transaction with its
cursor (agent/gallery/mirror.py) and reaches the index under the gallery's view lock, so a search sees a page
whole or not at all, and a kill -9 anywhere resumes from the last committed page.

Failure policy (docs/sync.md): a hub that is down, slow or answers garbage leaves the gallery as it is; the
syncer retries with jittered exponential backoff and reports the lag. A mirrored group is *stale* when the
edge has not reached the hub's head for `max_staleness_s` (or is in the middle of a snapshot, or never caught
up); stale groups still name people but grant no access (publish/access.py: gallery_stale). A revoked device
erases what it mirrors from that hub.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np

from agent.errors import InputError
from agent.gallery import Gallery, mirror
from agent.gallery.mirror import MirrorFace, MirrorOp
from agent.sync.client import HubClient, HubRefused, HubUnavailable
from agent.sync.config import SyncConfig
from agent.sync.wire import PageError, page_fields, parse_op

log = logging.getLogger(__name__)

# (thumbnails, the hub's model id) -> this device's embeddings, None where a chip yields no face
Reembed = Callable[[list[bytes], str], list[np.ndarray | None]]


def engine_reembedder(engine) -> Reembed:
    """Chips of another variant of this model are embedded as they are (same alignment); chips of another
    model are re-aligned first (FaceEngine.embed_foreign_chips)."""

    def reembed(thumbnails: list[bytes], source_model: str) -> list[np.ndarray | None]:
        if source_model.split("/", 1)[0] == engine.model_id.split("/", 1)[0]:
            return list(engine.embed_thumbnails(thumbnails))
        return engine.embed_foreign_chips(thumbnails)

    return reembed


_ERASE_GROUP_CODES = {"group_not_granted", "group_not_found"}


_CLOCK_SLACK_S = 60.0  # a caught-up time further in the future than this means the clock went back
_MIN_ROUND_S = 0.25  # rounds start at most this often, however often announcements arrive


def _seg(group_id: str) -> str:
    """A group id as one URL path segment (ids may hold spaces, '/', or non-ASCII)."""
    return quote(group_id, safe="")


class GroupRefused(Exception):
    """This group cannot be mirrored (e.g. another model and no thumbnails); other groups carry on."""


@dataclass
class SyncStatus:
    state: str = "starting"  # starting | ok | behind | error | revoked
    last_success_at: float | None = None  # last round that reached every granted group's head
    last_attempt_at: float | None = None
    last_error: str | None = None
    failures: int = 0
    groups: dict[str, dict] = field(default_factory=dict)  # group -> cursor, head, behind, stale, error


class EdgeSyncer:
    def __init__(
        self,
        cfg: SyncConfig,
        gallery: Gallery,
        model_id: str,
        client: HubClient,
        reembed: Reembed | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg, self._gallery, self._model = cfg, gallery, model_id
        self._client, self._embed, self._clock = client, reembed, clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status = SyncStatus()
        self._rng = random.Random()
        self._threads = cfg.index_threads or os.cpu_count() or 1

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> EdgeSyncer:
        self._thread = threading.Thread(target=self._loop, name="sync-edge", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Pull now (an announcement said a group moved)."""
        self._wake.set()

    def announced(self, group_id: str, head: int) -> None:
        st = mirror.state(self._gallery.store, group_id)
        if head < 0 or st is None or head > st.cursor or st.snapshot is not None:
            self.wake()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                self.sync_once()
                wait = self._cfg.interval_s
            except Exception as exc:  # the syncer must outlive any single bad round
                wait = self._failed(exc)
            self._wake.wait(wait)
            # Announcements wake the loop at once, but a flood of them (a chatty or hostile broker) must
            # not turn it into a busy loop against the hub.
            self._stop.wait(max(0.0, _MIN_ROUND_S - (time.monotonic() - started)))

    def _failed(self, exc: Exception) -> float:
        with self._lock:
            self._status.failures += 1
            n = self._status.failures
            self._status.last_error = str(exc)
            if self._status.state != "revoked":
                self._status.state = "error"
        if isinstance(exc, (HubUnavailable, HubRefused)):
            log.warning("sync with %s failed (%d in a row): %s", self._client.hub, n, exc)
        else:
            log.exception("sync with %s failed (%d in a row)", self._client.hub, n)
        cap = min(self._cfg.backoff_max_s, self._cfg.interval_s * 2 ** min(n, 20))
        return self._rng.uniform(cap / 2, cap)  # jitter: a fleet that lost its hub does not return at once

    # -- status ------------------------------------------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            s = self._status
            now = self._clock()
            lag = None if s.last_success_at is None else round(now - s.last_success_at, 3)
            return {
                "hub": self._client.hub,
                "state": s.state,
                "lag_s": lag,
                "last_success_at": s.last_success_at,
                "last_attempt_at": s.last_attempt_at,
                "last_error": s.last_error,
                "failures": s.failures,
                "ops_behind": sum(g.get("behind", 0) for g in s.groups.values()),
                "groups": {k: dict(v) | {"stale": self.is_stale(k)} for k, v in s.groups.items()},
            }

    def is_stale(self, group_id: str) -> bool:
        """True when this mirrored group must not grant access: never caught up, in a snapshot, or not caught
        up for max_staleness_s. Local groups are never stale."""
        st = mirror.state(self._gallery.store, group_id)
        if st is None:
            return False
        if st.snapshot is not None or st.caught_up_at is None:
            return True
        age = self._clock() - st.caught_up_at
        if age < -_CLOCK_SLACK_S:  # caught up "in the future": this clock went back (no RTC); trust nothing
            return True
        limit = self._cfg.max_staleness_s
        return bool(limit) and age > limit

    # -- one round ---------------------------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Pull every granted group to the hub's head; True when all are caught up."""
        with self._lock:
            self._status.last_attempt_at = self._clock()
        listed_at = self._clock()
        try:
            listing = self._client.get("/v1/sync/groups")
        except HubRefused as exc:
            self._refused(exc)
            raise
        granted = self._granted(listing)
        self._drop_ungranted(granted)
        wanted = self._cfg.groups if self._cfg.groups is not None else sorted(granted)
        all_ok = True
        for gid in wanted:
            if gid not in granted:
                self._group_status(gid, error="not granted to this device by the hub")
                all_ok = False
                continue
            try:
                self._pull(gid, granted[gid].get("head"), listed_at)
            except GroupRefused as exc:
                log.error("sync: group %r not mirrored: %s", gid, exc)
                self._group_status(gid, error=str(exc))
                all_ok = False
            except HubRefused as exc:
                if exc.code == "device_revoked":
                    self._refused(exc)
                    raise
                if exc.code in _ERASE_GROUP_CODES:
                    self._erase_group(gid, exc.code)
                    continue
                raise
            except InputError as exc:  # the local gallery refused the mirror (e.g. a clashing local group)
                log.error("sync: group %r not mirrored: %s", gid, exc)
                self._group_status(gid, error=str(exc))
                all_ok = False
        with self._lock:
            self._status.failures = 0
            self._status.state = "ok" if all_ok else "behind"
            if all_ok:
                self._status.last_success_at = self._clock()
                self._status.last_error = None
        return all_ok

    @staticmethod
    def _granted(listing: dict) -> dict[str, dict]:
        groups = listing.get("groups")
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("group_id"), str) for g in groups
        ):
            raise PageError("groups listing without a list of groups")
        return {g["group_id"]: g for g in groups}

    def _drop_ungranted(self, granted: dict[str, dict]) -> None:
        wanted = set(self._cfg.groups) if self._cfg.groups is not None else None
        for st in mirror.states(self._gallery.store, self._client.hub):
            if st.group_id not in granted:
                self._erase_group(st.group_id, "no longer granted or deleted on the hub")
            elif wanted is not None and st.group_id not in wanted:
                self._erase_group(st.group_id, "no longer in sync.groups")

    def _erase_group(self, group_id: str, why: str) -> None:
        changes = self._gallery.apply_mirror(
            group_id, lambda: mirror.erase(self._gallery.store, group_id=group_id)
        )
        log.warning("sync: erased mirrored group %r (%d faces): %s", group_id, len(changes.removed), why)
        with self._lock:
            self._status.groups.pop(group_id, None)

    def _refused(self, exc: HubRefused) -> None:
        if exc.code == "device_revoked" and self._cfg.erase_on_revoke:
            changes = self._gallery.apply_mirror(
                "", lambda: mirror.erase(self._gallery.store, hub=self._client.hub)
            )
            log.error(
                "sync: the hub %s revoked this device; erased every group mirrored from it (%d faces)",
                self._client.hub,
                len(changes.removed),
            )
            with self._lock:
                self._status.state = "revoked"
                self._status.groups.clear()

    def _group_status(self, gid: str, **values: object) -> None:
        with self._lock:
            self._status.groups.setdefault(gid, {}).update(values)

    def _pull(self, gid: str, listed_head: object, listed_at: float) -> None:
        store = self._gallery.store
        st = mirror.state(store, gid) or mirror.adopt(store, gid, self._client.hub, self._model)
        head = listed_head if isinstance(listed_head, int) and not isinstance(listed_head, bool) else None
        if st.model_id != self._model:
            log.warning(
                "sync: group %r was mirrored for %s, now %s: resyncing", gid, st.model_id, self._model
            )
            mirror.request_snapshot(store, gid, model_id=self._model)
        elif st.snapshot is None and head is not None and head < st.cursor:
            # The hub's feed went backwards (restored from a backup): what we hold may include writes the
            # hub no longer has, and its new operations reuse our cursor's range. Only a snapshot is exact.
            log.warning(
                "sync: group %r: the hub's head %d is behind our cursor %d; resyncing", gid, head, st.cursor
            )
            mirror.request_snapshot(store, gid)
        elif st.snapshot is None and head is not None and head == st.cursor:
            mirror.mark_caught_up(
                store, gid, head, listed_at
            )  # nothing new: one request per round, not 1 + N
            self._group_status(gid, cursor=st.cursor, head=head, behind=0, error=None)
            return
        while not self._stop.is_set():
            st = mirror.state(store, gid)
            if st is None:
                return  # the group was deleted on the hub (a group_deleted operation)
            if st.snapshot is not None:
                if self._snapshot_page(gid, st):
                    continue
            elif not self._feed_page(gid, st):
                return

    def _query(self) -> dict[str, object]:
        cfg = self._cfg
        return {
            "limit": cfg.page_ops,
            "max_bytes": cfg.page_bytes,
            "thumbnails": cfg.thumbnails,
            "model": self._model,
        }

    def _feed_page(self, gid: str, st: mirror.SyncState) -> bool:
        """Apply one feed page; True if more follow."""
        try:
            page = self._client.get(
                f"/v1/sync/groups/{_seg(gid)}/feed", {"after": st.cursor, **self._query()}
            )
        except HubRefused as exc:
            if exc.code != "resync_required":
                raise
            log.warning("sync: group %r: the hub wants a snapshot (cursor %d): %s", gid, st.cursor, exc)
            mirror.request_snapshot(self._gallery.store, gid)
            return True
        nxt, more, head = page_fields(page, snapshot=False)
        if head < st.cursor:
            mirror.request_snapshot(self._gallery.store, gid)  # the hub's feed went backwards
            return True
        if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < st.cursor or nxt > head:
            raise PageError(f"next cursor {nxt!r} is not between our cursor {st.cursor} and the head {head}")
        if more and nxt == st.cursor:
            raise PageError("a page with more to come did not move the cursor")
        ops = self._convert(gid, page["ops"])
        self._check_room(gid, ops)
        changes = self._gallery.apply_mirror(
            gid,
            lambda: mirror.apply_page(
                self._gallery.store, gid, ops, cursor=nxt, snapshot=None, head=head, caught_up=not more
            ),
            self._threads,
        )
        self._group_status(gid, cursor=nxt, head=head, behind=max(0, head - nxt), error=None)
        return more and not changes.group_deleted

    def _snapshot_page(self, gid: str, st: mirror.SyncState) -> bool:
        """Apply one snapshot page; True while the snapshot goes on."""
        query = self._query() | ({"token": st.snapshot} if st.snapshot else {})
        page = self._client.get(f"/v1/sync/groups/{_seg(gid)}/snapshot", query)
        nxt, more, head = page_fields(page, snapshot=True)
        cursor = page.get("cursor")
        if not st.snapshot and not isinstance(cursor, int):
            raise PageError("the first snapshot page has no cursor")
        if nxt is not None and not isinstance(nxt, str):
            raise PageError("snapshot token is not a string")
        ops = self._convert(gid, page["ops"])
        self._check_room(gid, ops)
        token = nxt if more else None
        self._gallery.apply_mirror(
            gid,
            lambda: mirror.apply_page(
                self._gallery.store,
                gid,
                ops,
                cursor=cursor if not st.snapshot else None,
                snapshot=token,
                head=head,
                caught_up=False,
            ),
            self._threads,
        )
        self._group_status(gid, head=head, snapshot=token is not None, error=None)
        return True

    def _check_room(self, gid: str, ops: list[MirrorOp]) -> None:
        """A page that would overflow the index's max_elements is refused before anything is committed."""
        n = sum(1 for op in ops if op.face is not None)
        if n:
            self._gallery.check_room(gid, self._model, n)

    # -- wire ops -> mirror ops --------------------------------------------------------------------------

    def _convert(self, gid: str, raw: object) -> list[MirrorOp]:
        if not isinstance(raw, list):
            raise PageError("ops is not a list")
        ops: list[MirrorOp] = []
        reembed: list[tuple[int, bytes]] = []
        for item in raw:
            op = parse_op(item)
            if op.face is not None and op.face.model_id != self._model:
                thumb = op.face.thumbnail
                if thumb is None:
                    raise GroupRefused(
                        f"the hub's face {op.face.face_id} is embedded with {op.face.model_id}, this device "
                        f"runs {self._model}, and the hub has no thumbnail to re-embed it from; enrol the "
                        "group on the hub with thumbnails kept, or run the hub's model here"
                    )
                reembed.append((len(ops), thumb))
            ops.append(op)
        if reembed:
            ops = self._reembed(gid, ops, reembed)
        return ops

    def _reembed(self, gid: str, ops: list[MirrorOp], todo: list[tuple[int, bytes]]) -> list[MirrorOp]:
        """Embed the hub's thumbnails with this device's model. A chip in which no face is found is left
        out (its person is still mirrored) and counted in the status."""
        if self._embed is None:
            raise GroupRefused("faces of another model need re-embedding and this syncer has no engine")
        by_model: dict[str, list[tuple[int, bytes]]] = {}
        for i, thumb in todo:
            face = ops[i].face
            assert face is not None
            by_model.setdefault(face.model_id, []).append((i, thumb))
        out: list[MirrorOp | None] = list(ops)
        lost = 0
        for model, items in by_model.items():
            vectors = self._embed([t for _, t in items], model)
            if len(vectors) != len(items):
                raise GroupRefused(f"re-embedding gave {len(vectors)} vectors for {len(items)} thumbnails")
            for (i, _), vec in zip(items, vectors, strict=True):
                old = ops[i]
                assert old.face is not None
                if vec is None:
                    out[i], lost = None, lost + 1
                    continue
                fields = {**old.face.__dict__, "model_id": self._model, "vector": np.asarray(vec)}
                out[i] = MirrorOp(old.op, old.key, face=MirrorFace(**fields))
        if lost:
            log.warning(
                "sync: group %r: no face found in %d of the hub's thumbnails; not mirrored", gid, lost
            )
            with self._lock:
                g = self._status.groups.setdefault(gid, {})
                g["not_reembedded"] = g.get("not_reembedded", 0) + lost
        return [op for op in out if op is not None]
