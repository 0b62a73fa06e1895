"""The hub: /v1/sync/* on the API server, answered from the gallery's change feed (docs/sync.md).

Three signed GETs: the groups granted to the calling device, a page of one group's feed after a cursor, and
a page of one group's snapshot. A device signs exactly like a native API client (FA-HMAC-SHA256), with the
secret `face-agent hub devices add` issued; the device, its revocation and its grants are read from the
gallery database on every request, so a revocation by the CLI (another process) counts at once.

Used signatures go to the hub's own replay store (`hub.replay_store`, default hub-replay.sqlite3 beside
api.replay_store), not the API's: two caches on one file would each believe the other's boot record and drop
the start-time cut-off that covers a fresh store (agent/api/replay.py).

Only local groups are served: a group this node itself mirrors from another hub has no feed here.

`HubService` is what `serve` and `run` build: the family for ApiServer(families=...), a compaction thread and
the MQTT announcer (announce.py).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agent.api.auth import NATIVE_SCHEME, native_signature, raw_target
from agent.api.common import ApiError, Request, Response, digest_equal, json_response
from agent.api.config import ApiConfig
from agent.api.replay import ReplayCache, shared_replays
from agent.api.routes import Route, route
from agent.errors import ConfigError, InputError, TransientError
from agent.gallery import Gallery, GalleryStore, feed
from agent.sync.config import HubConfig
from agent.sync.devices import DeviceRecord, DeviceStore

log = logging.getLogger(__name__)

PREFIX = "/v1/sync"
DEFAULT_PAGE_OPS = 1000
DEFAULT_PAGE_BYTES = 4 << 20
MIN_PAGE_BYTES = 64 << 10
_MAX_INT = (1 << 63) - 1
_MAX_MODEL_CHARS = 128
REPLAY_FILENAME = "hub-replay.sqlite3"

STATUS = {
    "bad_argument": 400,
    "bad_body": 400,
    "auth_missing": 401,
    "auth_failed": 401,
    "auth_stale": 401,
    "auth_replayed": 401,
    "auth_unknown_key": 401,
    "device_revoked": 403,
    "group_not_granted": 403,
    "group_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "resync_required": 410,
    "length_required": 411,
    "body_too_large": 413,
    "busy": 429,
    "unavailable": 503,
    "internal": 500,
}


def check_transport(hub: HubConfig, api: ApiConfig) -> None:
    """Embeddings and thumbnails are biometric data: no hub over plain HTTP unless asked for (tests)."""
    if not api.tls and not hub.allow_plaintext:
        raise ConfigError(
            "hub: serving the feed needs HTTPS: set api.tls_cert_file and api.tls_key_file (docs/sync.md, "
            "TLS), or hub.allow_plaintext: true for a loopback test"
        )


def replay_path(hub: HubConfig, api: ApiConfig) -> Path | None:
    if hub.replay_store is not None:
        return hub.replay_store
    return api.replay_store.parent / REPLAY_FILENAME if api.replay_store is not None else None


# -- authentication ------------------------------------------------------------------------------------------


class DeviceAuth:
    """The native signature, checked against the device table instead of the API's credentials."""

    def __init__(self, devices: DeviceStore, max_age_s: float, replays: ReplayCache) -> None:
        self._devices = devices
        self._max_age_s = max_age_s
        self._replays = replays

    def device(self, req: Request) -> DeviceRecord:
        """The calling device, or the ApiError that refuses it (401 auth_*, 403 device_revoked)."""
        header = req.headers.get("authorization", "")
        if not header:
            raise ApiError("auth_missing", f"sign the request: Authorization: {NATIVE_SCHEME} ...")
        scheme, _, rest = header.partition(" ")
        if scheme != NATIVE_SCHEME:
            raise ApiError("auth_failed", f"Authorization scheme must be {NATIVE_SCHEME}")
        fields = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        key, ts, nonce, sig = (fields.get(k, "") for k in ("key", "ts", "nonce", "sig"))
        if not (key and ts and nonce and sig) or len(nonce) > 64:
            raise ApiError("auth_failed", "Authorization needs key, ts, nonce (<= 64 chars) and sig")
        dev = self._devices.lookup(key)
        if dev is None:
            raise ApiError("auth_unknown_key", "unknown device")
        signed_at = self._fresh(ts)
        expected = native_signature(dev.secret, req.method, raw_target(req), ts, nonce, req.body)
        if not digest_equal(expected, sig.lower()):
            raise ApiError("auth_failed", "signature does not match")
        self._replays.check_and_add(f"sync:{key}:{expected}", signed_at)
        if dev.revoked:  # only after the signature: nobody learns a device's state without its secret
            raise ApiError("device_revoked", "this device was revoked on the hub")
        return dev

    def _fresh(self, ts: str) -> float:
        if not (ts.isascii() and ts.isdigit()) or len(ts) > 16:  # "²".isdigit() is True
            raise ApiError("auth_failed", "ts must be milliseconds since the epoch")
        signed_at = int(ts) / 1000
        if abs(time.time() - signed_at) > self._max_age_s:
            raise ApiError("auth_stale", "ts is outside the validity window (check the device's clock)")
        return signed_at


# -- query values --------------------------------------------------------------------------------------------


def _one(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError("bad_argument", f"{name} is given more than once", name)
    return values[0]


def _int(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = _one(req, name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise ApiError("bad_argument", f"{name} must be an integer in [{lo}, {hi}]", name)
    return int(raw)


def _known(req: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(req.query) - allowed)
    if unknown:
        raise ApiError("bad_argument", f"unknown query parameter(s) {', '.join(unknown)}", unknown[0])


_PAGE_PARAMS = frozenset({"limit", "max_bytes", "thumbnails", "model"})
_FEED_PARAMS = _PAGE_PARAMS | {"after"}
_SNAPSHOT_PARAMS = _PAGE_PARAMS | {"token"}


# -- the family ----------------------------------------------------------------------------------------------


class HubFamily:
    """/v1/sync/*: a Family for agent.api.routes.Router (handed to ApiServer by serve / run)."""

    name = "sync"
    prefix = PREFIX
    max_body_bytes = 16 * 1024  # GETs only: no body worth reading

    def __init__(self, config: HubConfig, store: GalleryStore, auth: DeviceAuth) -> None:
        self._cfg = config
        self._store = store
        self._auth = auth

    def routes(self) -> list[Route]:
        return [
            route("GET", f"{PREFIX}/groups", self.get_groups, self.name),
            route("GET", f"{PREFIX}/groups/{{group_id}}/feed", self.get_feed, self.name),
            route("GET", f"{PREFIX}/groups/{{group_id}}/snapshot", self.get_snapshot, self.name),
        ]

    def error(self, exc: Exception, req: Request) -> Response:
        code, message = _classify(exc)
        err: dict[str, Any] = {"code": code, "message": message}
        if isinstance(exc, feed.ResyncRequired):
            err["floor"] = exc.floor
        status = STATUS.get(code, 500)
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return json_response(status, {"error": err, "request_id": req.request_id}, headers)

    # -- handlers --------------------------------------------------------------------------------------------

    def get_groups(self, req: Request, params: dict[str, str]) -> Response:
        dev = self._auth.device(req)
        _known(req, frozenset())
        out = []
        with self._store.reader() as conn:
            for gid in dev.groups:
                row = conn.execute(
                    "SELECT group_name, info FROM groups WHERE group_id = ? AND origin IS NULL", (gid,)
                ).fetchone()
                if row is None:
                    continue
                head, low = feed.group_head(conn, gid), feed.group_floor(conn, gid)
                out.append(
                    {"group_id": gid, "group_name": row[0], "info": row[1], "head": head, "floor": low}
                )
        return json_response(200, {"device_id": dev.device_id, "groups": out})

    def get_feed(self, req: Request, params: dict[str, str]) -> Response:
        gid = self._granted(req, params["group_id"])
        _known(req, _FEED_PARAMS)
        after = _int(req, "after", 0, 0, _MAX_INT)
        limit, max_bytes, thumbs, model = self._page_args(req)
        page = feed.read_feed(
            self._store, gid, after, limit=limit, max_bytes=max_bytes, thumbnails=thumbs, model_id=model
        )
        body = {"group_id": gid, "ops": page.ops, "next": page.next, "more": page.more, "head": page.head}
        return json_response(200, body)

    def get_snapshot(self, req: Request, params: dict[str, str]) -> Response:
        gid = self._granted(req, params["group_id"])
        _known(req, _SNAPSHOT_PARAMS)
        token = _one(req, "token") or None
        limit, max_bytes, thumbs, model = self._page_args(req)
        page = feed.read_snapshot(
            self._store, gid, token, limit=limit, max_bytes=max_bytes, thumbnails=thumbs, model_id=model
        )
        body = {"group_id": gid, "ops": page.ops, "next": page.next, "more": page.more, "head": page.head}
        return json_response(200, body | {"cursor": page.cursor})

    def _granted(self, req: Request, group_id: str) -> str:
        """403 before 404: a device learns nothing about groups it was not granted."""
        dev = self._auth.device(req)
        if group_id not in dev.groups:
            raise ApiError("group_not_granted", f"group {group_id!r} is not granted to this device")
        rows = self._store.read("SELECT origin FROM groups WHERE group_id = ?", (group_id,))
        if not rows or rows[0][0] is not None:
            raise ApiError("group_not_found", f"no group {group_id!r} on this hub")
        return group_id

    def _page_args(self, req: Request) -> tuple[int, int, feed.Thumbnails, str | None]:
        cfg = self._cfg
        limit = _int(req, "limit", min(DEFAULT_PAGE_OPS, cfg.max_page_ops), 1, cfg.max_page_ops)
        max_bytes = _int(
            req, "max_bytes", min(DEFAULT_PAGE_BYTES, cfg.max_page_bytes), MIN_PAGE_BYTES, cfg.max_page_bytes
        )
        thumbs = _one(req, "thumbnails") or "auto"
        if thumbs not in ("auto", "always", "never"):
            raise ApiError("bad_argument", "thumbnails must be auto, always or never", "thumbnails")
        model = _one(req, "model") or None
        if model is not None and (len(model) > _MAX_MODEL_CHARS or "\x00" in model):
            raise ApiError("bad_argument", f"model must be 1..{_MAX_MODEL_CHARS} characters", "model")
        return limit, max_bytes, thumbs, model  # type: ignore[return-value]


def _classify(exc: Exception) -> tuple[str, str]:
    """(code, message) of docs/sync.md for anything a handler raised."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message
    if isinstance(exc, feed.ResyncRequired):
        return "resync_required", exc.message
    if isinstance(exc, InputError):
        if exc.code in ("group_not_found", "device_revoked", "group_not_granted"):
            return exc.code, exc.message
        return "bad_argument", exc.message  # e.g. invalid_token: a snapshot token this hub never gave out
    if isinstance(exc, TransientError):
        return ("busy" if exc.code == "busy" else "unavailable"), exc.message
    if isinstance(exc, sqlite3.OperationalError):  # SQLite locked past busy_timeout_s, disk I/O
        return "unavailable", "the gallery database is busy; retry"
    return "internal", "internal error"


# -- the service ---------------------------------------------------------------------------------------------


class HubService:
    """The hub role: `family` for the API server, feed compaction and announcements in the background.

    Build before the API server (a plain-HTTP hub without hub.allow_plaintext fails here), pass `family` to
    ApiServer(..., families=[hub.family]), `start()`; on the way out stop the server first, then `stop()`."""

    def __init__(self, config: HubConfig, gallery: Gallery, api: ApiConfig) -> None:
        check_transport(config, api)
        self.config = config
        self.store = gallery.store
        self.devices = DeviceStore(self.store)
        # Several hub processes on one PostgreSQL database share one store of used signatures.
        shared = shared_replays(api, gallery, "hub")  # (a cache has __len__: an empty one is falsy)
        self._replays = (
            shared
            if shared is not None
            else ReplayCache(api.replay_cache_size, api.signature_max_age_s, replay_path(config, api))
        )
        self.family = HubFamily(
            config, self.store, DeviceAuth(self.devices, api.signature_max_age_s, self._replays)
        )
        self._stop = threading.Event()
        self._compactor: threading.Thread | None = None
        self._announcer: Any = None  # announce.Announcer when hub.announce is set
        self._stats_lock = threading.Lock()
        self._stats: tuple[float, feed.FeedStats] | None = None
        self.compacted = 0  # operations this process compacted away

    def start(self) -> HubService:
        if self.config.announce is not None:
            from agent.sync.announce import Announcer

            self._announcer = Announcer(self.config, self.store)
            self._announcer.start()
        self._compactor = threading.Thread(target=self._compact_loop, name="hub-compact", daemon=True)
        self._compactor.start()
        log.info("hub: serving %s/* (%d device(s))", PREFIX, len(self.devices.list()))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background threads within about `timeout`, then close the replay store (a handler still
        running after the server stopped gets 503 unavailable)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._announcer is not None:
            self._announcer.stop(max(0.1, deadline - time.monotonic()))
        if self._compactor is not None:
            self._compactor.join(max(0.1, deadline - time.monotonic()))
        self._replays.close()

    def compact(self) -> int:
        """One compaction now (`face-agent hub compact` runs the same); returns the operations dropped."""
        keep_s = self.config.feed_keep_days * 86400
        n = feed.compact(self.store, keep_ops=self.config.feed_keep_ops, keep_s=keep_s)
        self.compacted += n
        if n:
            log.info("hub: compacted %d feed operation(s); floor now %d", n, self.stats().floor)
        return n

    def _compact_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.compact()
            except (sqlite3.Error, TransientError) as exc:  # busy database: the next round tries again
                log.warning("hub: feed compaction failed: %s", exc)
            self._stop.wait(self.config.compact_interval_s)

    def stats(self, max_age_s: float = 0.0) -> feed.FeedStats:
        """Feed size, oldest, head and floor; `max_age_s` > 0 reuses a reading that young (metric scrapes)."""
        with self._stats_lock:
            if self._stats is not None and time.monotonic() - self._stats[0] <= max_age_s:
                return self._stats[1]
        got = feed.stats(self.store)
        with self._stats_lock:
            self._stats = (time.monotonic(), got)
        return got

    @property
    def announcer(self) -> Any:
        return self._announcer

    def register_metrics(self, registry: Any) -> None:
        """face_agent_hub_feed_* gauges on an agent.ops.metrics.Registry (`run`'s /metrics), read at scrape
        time from one feed reading per second. Replaces the gauges of an earlier HubService (a config
        reload builds a new one), so it may be called again on the same registry."""
        fields = {
            "ops": "Operations kept in the hub's change feed",
            "oldest": "Oldest sequence number kept in the feed (0: empty)",
            "head": "Newest sequence number of the feed",
            "floor": "Operations up to this sequence number were compacted away",
        }
        for name, text in fields.items():
            registry.unregister(f"face_agent_hub_feed_{name}")
            registry.gauge_callback(
                f"face_agent_hub_feed_{name}", text, lambda n=name: float(getattr(self.stats(1.0), n))
            )
        registry.unregister("face_agent_hub_devices")
        registry.gauge_callback(
            "face_agent_hub_devices",
            "Devices by state (active, revoked)",
            self._device_counts,
            ["state"],
        )

    def _device_counts(self) -> dict[tuple[str, ...], float]:
        devices = self.devices.list()
        revoked = sum(d.revoked for d in devices)
        return {("active",): float(len(devices) - revoked), ("revoked",): float(revoked)}
