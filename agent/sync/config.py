"""Config slices of gallery sync: `hub:` (serve a change feed to devices) and `sync:` (mirror a hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.publish.config import MqttConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubConfig(_Strict):
    """The hub role: the API server also answers /v1/sync/* to devices with credentials in the gallery
    database (`face-agent hub devices add`)."""

    allow_plaintext: bool = Field(
        False,
        description="serve embeddings and thumbnails over plain HTTP (loopback tests only); otherwise the "
        "API must have api.tls_cert_file and api.tls_key_file",
    )
    database: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^postgres(ql)?://",
        description="PostgreSQL URL (libpq's: postgresql://user@host/db?passfile=...) of the gallery, "
        "devices and feed, shared by several hub processes; unset: SQLite under gallery.path. `face-agent "
        "hub migrate` creates or upgrades its schema (docs/hub.md)",
        repr=False,  # may carry a password
    )
    feed_keep_ops: int = Field(
        1_000_000, ge=1000, le=1_000_000_000, description="operations kept in the feed at most"
    )
    feed_keep_days: float = Field(
        30.0, gt=0, le=3650, description="older operations are compacted; edges behind them resync"
    )
    compact_interval_s: float = Field(3600.0, gt=0, le=86400, description="how often the feed is compacted")
    max_page_ops: int = Field(5000, ge=1, le=100_000, description="largest page a device may ask for")
    max_page_bytes: int = Field(
        32 << 20, ge=64 << 10, le=256 << 20, description="largest page a device may ask for, in JSON bytes"
    )
    announce: MqttConfig | None = Field(
        None, description="broker for retained <announce_prefix>/hub/groups/<group>/version messages"
    )
    announce_prefix: str = Field(
        "face-agent", min_length=1, max_length=128, pattern=r"^[^#+\x00]+$", description="topic prefix"
    )
    announce_poll_s: float = Field(
        0.5, gt=0, le=60, description="how often the hub looks for new feed operations to announce"
    )
    replay_store: Path | None = Field(
        None,
        description="SQLite file keeping the signatures devices used, so a replay is refused also after a "
        "restart; unset: hub-replay.sqlite3 beside api.replay_store (in memory when that is unset too)",
    )


def place_hub_database(data: dict) -> dict:
    """Before validation of a whole config: hub.database is where the operator sets the PostgreSQL URL, the
    gallery slice is what opens the store, so the URL is copied there. A URL in gallery.database without a
    hub role, or two different URLs, is refused."""
    hub, gallery = data.get("hub"), data.get("gallery")
    url = hub.get("database") if isinstance(hub, dict) else None
    if not isinstance(gallery, dict):
        return data
    if url is None:
        if gallery.get("database") is not None:
            raise ValueError("gallery.database (PostgreSQL) is for hub processes: set it as hub.database")
        return data
    if gallery.get("database") not in (None, url):
        raise ValueError("set the PostgreSQL URL once, as hub.database (not gallery.database too)")
    return {**data, "gallery": {**gallery, "database": url}}


class SyncConfig(_Strict):
    """The edge role: mirror the groups a hub grants this device into the local gallery."""

    hub_url: str = Field(
        min_length=8, max_length=2048, pattern=r"^https?://", description="the hub's base URL (https://...)"
    )
    allow_plaintext: bool = Field(
        False, description="accept an http:// hub (embeddings in clear text; loopback tests only)"
    )
    device_id: str = Field(min_length=1, max_length=128, pattern=r"^[0-9A-Za-z_.-]+$")
    secret_file: Path | None = Field(None, description="file whose first line is the device secret")
    secret_credential: str | None = Field(
        None, description="systemd credential name ($CREDENTIALS_DIRECTORY/<name>) holding the secret"
    )
    ca_file: Path | None = Field(None, description="CA bundle that signed the hub's certificate")
    groups: list[str] | None = Field(
        None, description="groups to mirror; unset: every group the hub grants this device"
    )
    interval_s: float = Field(10.0, gt=0, le=86400, description="pull interval without announcements")
    timeout_s: float = Field(10.0, gt=0, le=600, description="connect and read timeout of one request")
    backoff_max_s: float = Field(120.0, gt=0, le=3600, description="cap of the jittered retry wait")
    page_ops: int = Field(1000, ge=1, le=100_000, description="operations asked for per page")
    page_bytes: int = Field(4 << 20, ge=64 << 10, le=256 << 20, description="JSON bytes asked for per page")
    max_response_bytes: int = Field(
        16 << 20,
        ge=64 << 10,
        le=1 << 30,
        description="a larger answer is refused unread (a page may exceed page_bytes by one operation)",
    )
    index_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="threads hnswlib uses to index a large page (a first sync, a snapshot); 0: every core. "
        "Recognition shares them meanwhile; small pages always use one",
    )
    thumbnails: Literal["auto", "always", "never"] = Field(
        "auto",
        description="aligned thumbnails to fetch and keep: auto = only where the hub's embedding is of "
        "another model (they are re-embedded here); always = keep them all (re-embedding after a model "
        "change needs them)",
    )
    max_staleness_s: float = Field(
        600.0,
        ge=0,
        le=30 * 86400,
        description="mirrored groups stop granting access when the edge has not caught up with the hub "
        "for this long (0: never)",
    )
    announcements: bool = Field(
        True, description="pull at once on the hub's retained version messages (needs publish.mqtt)"
    )
    announce_prefix: str = Field("face-agent", min_length=1, max_length=128, pattern=r"^[^#+\x00]+$")
    erase_on_revoke: bool = Field(
        True, description="a hub answering device_revoked makes this device erase that hub's groups"
    )

    @model_validator(mode="after")
    def _checks(self) -> SyncConfig:
        if self.hub_url.startswith("http://") and not self.allow_plaintext:
            raise ValueError(
                "sync.hub_url is http://: embeddings would travel in clear text; use https:// with "
                "sync.ca_file, or set sync.allow_plaintext: true (loopback tests only)"
            )
        if self.max_response_bytes < self.page_bytes + (1 << 20):
            raise ValueError(
                "sync.max_response_bytes must exceed sync.page_bytes by at least 1 MiB (one operation with "
                "its thumbnail may cross the page size); otherwise every page would be refused"
            )
        if (self.secret_file is None) == (self.secret_credential is None):
            raise ValueError("set exactly one of sync.secret_file and sync.secret_credential")
        return self
