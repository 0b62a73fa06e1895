"""`face-agent erase --group G --person P`: remove one person completely from the device's state files.

"Completely" means the bytes, not only the rows:
- gallery: the person, their faces (embeddings) and thumbnails go through the Gallery API, which also
  overwrites their vectors in the hnswlib index with noise; the index is saved on close;
- outbox: queued MQTT messages naming the person (recognized and access events, and the JPEG snapshot that
  directly follows such an event) are deleted. This works on the outbox SQLite file directly, against the
  schema of agent/publish/outbox.py, because the outbox has no delete-by-content API;
- both SQLite files are then VACUUMed (rebuilt without free pages) and their WAL checkpointed with TRUNCATE,
  so no deleted page or old WAL frame still holds the outer_id, an embedding or a thumbnail;
- a hub on PostgreSQL (hub.database): the same deletes, then VACUUM (FULL) of faces, face_thumbs and
  persons, which rewrites those tables without the deleted rows (docs/hub.md, Erasure). Other hub processes
  keep the person in their indexes until their next follow round (about a second) scrubs it.

The running service keeps its own copy of the index in memory and would save it back: stop it first
(`systemctl stop face-agent`); the CLI refuses while systemd reports the unit active.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.errors import ConfigError, InputError, TransientError
from agent.gallery import Gallery, GalleryConfig
from agent.gallery.store import DB_FILENAME

log = logging.getLogger(__name__)

_SNAPSHOT_SUFFIX = "/snapshot"
_SCAN_BATCH = 1000  # outbox rows read per query, so a full outbox never sits in memory at once
_BUSY_TIMEOUT_S = 10.0


@dataclass
class ErasureReport:
    group_id: str
    outer_id: str
    person_found: bool = False
    faces: int = 0
    thumbnails: int = 0
    outbox_rows: int = 0
    vacuumed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        who = f"person {self.outer_id!r} of group {self.group_id!r}"
        gallery = (
            f"{self.faces} face(s) with {self.thumbnails} thumbnail(s) and their index entries"
            if self.person_found
            else "nothing in the gallery (person not enrolled)"
        )
        return (
            f"erased {who}: {gallery}; {self.outbox_rows} queued outbox message(s); "
            f"vacuumed {', '.join(self.vacuumed) or 'no file'}"
        )


def vacuum(db_path: Path, timeout_s: float = _BUSY_TIMEOUT_S) -> None:
    """Rebuild the file without free pages, then truncate its WAL: deleted rows leave no bytes behind."""
    conn = sqlite3.connect(str(db_path), timeout=timeout_s, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("VACUUM")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.close()
    if busy:
        raise TransientError(
            f"{db_path}: another process holds the WAL; stop the agent and erase again", code="db_busy"
        )


def _names_person(payload: bytes, group_id: str, outer_id: str) -> dict | None:
    """The decoded JSON object if it is an event or access decision about this person, else None."""
    if not payload.startswith(b"{"):
        return None
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and obj.get("person_id") == outer_id and obj.get("group_id") == group_id:
        return obj
    return None


def _snapshot_topic(event_topic: str) -> str:
    """`<base>/cameras/<cam>/recognized` -> `<base>/cameras/<cam>/snapshot` (agent/publish/topics.py)."""
    return event_topic.rsplit("/", 1)[0] + _SNAPSHOT_SUFFIX


def _matching_outbox_ids(conn: sqlite3.Connection, group_id: str, outer_id: str) -> list[int]:
    """Ids of rows naming the person, plus the snapshot row written right after such an event (one
    `put` writes event, snapshot, access decision in this order, so the snapshot has the next id)."""
    ids: list[int] = []
    snapshot_after: dict[int, str] = {}
    last = 0
    while rows := conn.execute(
        "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (last, _SCAN_BATCH)
    ).fetchall():
        for rid, topic, payload in rows:
            last = rid
            if snapshot_after.pop(rid, None) == topic:
                ids.append(rid)
                continue
            obj = _names_person(bytes(payload), group_id, outer_id)
            if obj is not None:
                ids.append(rid)
                if obj.get("has_snapshot"):
                    snapshot_after[rid + 1] = _snapshot_topic(topic)
    return ids


def erase_outbox(path: Path, group_id: str, outer_id: str) -> int:
    """Delete queued messages about the person from the outbox file; returns how many rows went."""
    conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = _matching_outbox_ids(conn, group_id, outer_id)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise TransientError(
            f"cannot erase from the outbox {path}: {exc}", code="outbox_erase_failed"
        ) from exc
    finally:
        conn.close()
    return len(ids)


def _erase_gallery(cfg: GalleryConfig, group_id: str, outer_id: str, report: ErasureReport) -> None:
    with Gallery(cfg) as gallery:
        # A removal applied while an index is still loading would only be reconciled later (marked
        # deleted, not overwritten): wait so the vectors are really scrubbed before the save on close.
        if not gallery.wait_ready(cfg.ready_timeout_s):
            raise TransientError(f"gallery at {cfg.path} did not load in time", code="index_not_ready")
        try:
            faces = gallery.faces_of_person(group_id, outer_id)
            gallery.get_person(group_id, outer_id)
        except InputError as exc:
            if exc.code not in ("person_not_found", "group_not_found"):
                raise
            return
        report.person_found = True
        report.thumbnails = sum(gallery.get_thumbnail(f.face_id) is not None for f in faces)
        report.faces = gallery.delete_person(group_id, outer_id)


def erase_person(
    gallery_cfg: GalleryConfig, outbox_path: Path | None, group_id: str, outer_id: str
) -> ErasureReport:
    """Erase the person from the gallery and the outbox, then VACUUM both files. Idempotent."""
    report = ErasureReport(group_id, outer_id)
    db_path = gallery_cfg.path / DB_FILENAME
    if gallery_cfg.database is not None:  # a hub on PostgreSQL: delete, then rewrite the tables that held it
        from agent.gallery.db import PostgresDb, masked

        _erase_gallery(gallery_cfg, group_id, outer_id, report)
        db = PostgresDb(gallery_cfg.database, pool_size=1, timeout_s=gallery_cfg.busy_timeout_s)
        try:
            db.vacuum_full(("faces", "face_thumbs", "persons"))
        finally:
            db.close()
        report.vacuumed.append(f"{masked(gallery_cfg.database)} (faces, face_thumbs, persons)")
    elif db_path.exists():
        _erase_gallery(gallery_cfg, group_id, outer_id, report)
        vacuum(db_path)
        report.vacuumed.append(str(db_path))
    if outbox_path is not None and outbox_path.exists():
        report.outbox_rows = erase_outbox(outbox_path, group_id, outer_id)
        vacuum(outbox_path)
        report.vacuumed.append(str(outbox_path))
    return report


# -- command line --------------------------------------------------------------------------------------------


def service_active(unit: str, timeout_s: float = 5.0) -> bool:
    """True when systemd reports the unit active; False when it is not or systemd is absent."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return False
    try:
        out = subprocess.run(
            [systemctl, "is-active", unit], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() in ("active", "reloading", "activating")


def cmd_erase(args: argparse.Namespace) -> int:
    from agent.config import load_agent_config

    if args.config is not None and args.state_dir is not None:
        raise ConfigError("give --config or --state-dir, not both")
    environ = dict(os.environ)
    if args.state_dir is not None:
        environ["STATE_DIRECTORY"] = str(args.state_dir)
    cfg = load_agent_config(args.config, environ)
    if not args.force and service_active(args.unit):
        print(
            f"face-agent: {args.unit} is running and would save the person back from memory; "
            f"stop it first (systemctl stop {args.unit}) or pass --force",
            file=sys.stderr,
        )
        return 2
    report = erase_person(cfg.gallery, cfg.publish.outbox.path, args.group, args.person)
    print(json.dumps(asdict(report)) if args.json else report.describe())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("erase", help="erase one person: gallery, thumbnails, index entries, outbox, VACUUM")
    e.add_argument("--group", required=True, help="group id")
    e.add_argument("--person", required=True, help="the person's outer id (person_id in MQTT events)")
    e.add_argument("--config", type=Path, default=None, help="agent YAML config: gallery and outbox paths")
    e.add_argument("--state-dir", type=Path, default=None, help="state dir when no config is given")
    e.add_argument("--unit", default="face-agent.service", help="systemd unit that must be stopped")
    e.add_argument("--force", action="store_true", help="erase even though the unit looks active")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_erase)
