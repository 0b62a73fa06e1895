"""Device credentials and group grants of a hub, in the gallery database (tables `devices`, `grants`).

They live beside the groups they grant, so `face-agent hub devices revoke` (another process, same SQLite file
in WAL mode) takes effect on the running hub's very next request: every request looks its device up afresh,
nothing is cached. The secret is stored as issued because an HMAC is checked with the secret itself; the
database file is as sensitive as the embeddings it already holds.

A grant names a group id, not a row of `groups`: a group may be granted before it is created, and a grant
outlives a deleted group (the device then gets 404 group_not_found, and erases its mirror).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.errors import InputError
from agent.gallery.db import Conn
from agent.gallery.store import GalleryStore

# The native Authorization header splits on ',' and '=': a device id must hold neither (same as SyncConfig).
DEVICE_ID_RE = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")
_MAX_GROUP_CHARS = 1024
_MAX_INFO_CHARS = 1024


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    info: str
    created_at: float
    revoked_at: float | None
    groups: tuple[str, ...]  # granted group ids, sorted
    secret: str = field(default="", repr=False)  # only from lookup(); list() leaves it empty

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def check_device_id(device_id: object) -> str:
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise InputError("device id must be 1..128 of [0-9A-Za-z_.-]", code="invalid_device_id")
    return device_id


def _check_group(group_id: object) -> str:
    if not isinstance(group_id, str) or not 0 < len(group_id) <= _MAX_GROUP_CHARS or "\x00" in group_id:
        raise InputError(f"group id must be 1..{_MAX_GROUP_CHARS} characters", code="invalid_group_id")
    return group_id


class DeviceStore:
    """Add, grant, ungrant, revoke and look up devices; every call is one short database transaction."""

    def __init__(self, store: GalleryStore) -> None:
        self._store = store

    def add(self, device_id: str, groups: Sequence[str] = (), info: str = "") -> str:
        """Create a device with its grants; returns the new secret (shown once, never again by `list`)."""
        check_device_id(device_id)
        wanted = sorted({_check_group(g) for g in groups})
        if not isinstance(info, str) or len(info) > _MAX_INFO_CHARS or "\x00" in info:
            raise InputError(f"info must be at most {_MAX_INFO_CHARS} characters", code="invalid_info")
        secret = secrets.token_urlsafe(32)
        try:
            with self._store.transaction() as conn:
                conn.execute(
                    "INSERT INTO devices (device_id, secret, info, created_at) VALUES (?, ?, ?, ?)",
                    (device_id, secret, info, time.time()),
                )
                conn.executemany("INSERT INTO grants VALUES (?, ?)", [(device_id, g) for g in wanted])
        except self._store.db.integrity_errors as exc:
            raise InputError(f"device {device_id!r} already exists", code="device_exists") from exc
        return secret

    def grant(self, device_id: str, group_id: str) -> bool:
        """Grant a group; False when it already was."""
        _check_group(group_id)
        with self._store.transaction() as conn:
            self._require(conn, device_id)
            cur = conn.execute(
                "INSERT INTO grants VALUES (?, ?) ON CONFLICT DO NOTHING", (device_id, group_id)
            )
            return cur.rowcount == 1

    def ungrant(self, device_id: str, group_id: str) -> bool:
        """Take a group back (the device erases its mirror on its next pull); False if it was not granted."""
        with self._store.transaction() as conn:
            self._require(conn, device_id)
            cur = conn.execute(
                "DELETE FROM grants WHERE device_id = ? AND group_id = ?", (device_id, group_id)
            )
            return cur.rowcount == 1

    def revoke(self, device_id: str) -> bool:
        """Refuse the device from now on (403 device_revoked: it erases what it mirrors). Kept, not deleted,
        so the device learns why it is refused; False when it already was revoked."""
        with self._store.transaction() as conn:
            self._require(conn, device_id)
            cur = conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                (time.time(), device_id),
            )
            return cur.rowcount == 1

    def list(self) -> list[DeviceRecord]:
        """Every device with its grants, without secrets."""
        grants: dict[str, list[str]] = {}
        for dev, gid in self._store.read("SELECT device_id, group_id FROM grants ORDER BY group_id"):
            grants.setdefault(dev, []).append(gid)
        rows = self._store.read(
            "SELECT device_id, info, created_at, revoked_at FROM devices ORDER BY device_id"
        )
        return [DeviceRecord(d, i, c, r, tuple(grants.get(d, ()))) for d, i, c, r in rows]

    def lookup(self, device_id: str) -> DeviceRecord | None:
        """The device with its secret and grants, read now (a revocation by another process shows at once)."""
        if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
            return None
        # Two point reads, no snapshot: one round trip each on every request of every device (a grant that
        # changes between them shows on the next request either way).
        rows = self._store.read(
            "SELECT info, created_at, revoked_at, secret FROM devices WHERE device_id = ?", (device_id,)
        )
        if not rows:
            return None
        groups = self._store.read(
            "SELECT group_id FROM grants WHERE device_id = ? ORDER BY group_id", (device_id,)
        )
        info, created, revoked, secret = rows[0]
        return DeviceRecord(device_id, info, created, revoked, tuple(g for (g,) in groups), secret)

    @staticmethod
    def _require(conn: Conn, device_id: str) -> None:
        if conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone() is None:
            raise InputError(f"device {device_id!r} not found", code="device_not_found")
