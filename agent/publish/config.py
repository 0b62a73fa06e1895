"""Config slices for the publishing layer: broker connection, persistent outbox, HA discovery, access policy.

Secrets never live in the config file: the broker password is read from a file or from a systemd credential
(`LoadCredential=` puts it under $CREDENTIALS_DIRECTORY) when the publisher starts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigError

log = logging.getLogger(__name__)

# Control levels shared with the cloud face APIs, weakest first.
Level = Literal["NONE", "LOW", "NORMAL", "HIGH"]
LEVELS: tuple[str, ...] = ("NONE", "LOW", "NORMAL", "HIGH")

# One MQTT topic level made of safe characters: no wildcards, no separators, no spaces.
TOPIC_LEVEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CREDENTIAL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Strict):
    """How to reach the broker. QoS is always 1 for events."""

    host: str = Field(min_length=1, max_length=253, description="Broker host name or IP address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port (8883 is usual with TLS).")
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="MQTT client id; default 'face-agent-<device_id>'. Must be unique on the broker.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive interval in seconds.")
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Timeout of one TCP/TLS connect attempt in seconds."
    )
    username: str | None = Field(default=None, min_length=1, max_length=256, description="Broker user name.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the broker password (first line). Mutually exclusive with "
        "password_credential.",
    )
    password_credential: str | None = Field(
        default=None,
        description="Name of a systemd credential (LoadCredential=NAME:...) holding the password; read from "
        "$CREDENTIALS_DIRECTORY/NAME.",
    )
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA bundle for TLS; system CAs when unset.")
    cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(default=None, description="Private key of the client certificate.")
    reconnect_min_s: int = Field(default=1, ge=1, le=60, description="First reconnect delay in seconds.")
    reconnect_max_s: int = Field(
        default=60, ge=1, le=3600, description="Cap of the exponentially growing reconnect delay in seconds."
    )
    inflight_window: int = Field(
        default=10, ge=1, le=100, description="Events sent but not yet acknowledged (PUBACK) at most."
    )

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, value: str | None) -> str | None:
        if value is not None and not _CREDENTIAL_NAME_RE.match(value):
            raise ValueError("credential name may hold only letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("set password_file or password_credential, not both")
        has_password = self.password_file is not None or self.password_credential is not None
        if has_password and self.username is None:
            raise ValueError("a password needs a username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.tls and any(p is not None for p in (self.ca_file, self.cert_file, self.key_file)):
            raise ValueError("ca_file/cert_file/key_file need tls: true")
        return self


class OutboxConfig(_Strict):
    """The SQLite outbox that holds events until the broker acknowledges them."""

    path: Path = Field(
        default=Path("/var/lib/face-agent/outbox.sqlite3"),
        description="SQLite file of the outbox (systemd StateDirectory=face-agent: /var/lib/face-agent).",
    )
    max_rows: int = Field(
        default=10_000, ge=10, le=10_000_000, description="Most messages kept; the oldest are dropped beyond."
    )
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        le=16 * 1024**3,
        description="Most payload bytes kept (snapshots count); the oldest messages are dropped beyond.",
    )
    max_age_s: float = Field(
        default=7 * 86400.0, ge=1.0, le=365 * 86400.0, description="Messages older than this are dropped."
    )


class HomeAssistantConfig(_Strict):
    """Home Assistant MQTT discovery: one device per agent, a sensor and a binary sensor per camera."""

    enabled: bool = Field(default=False, description="Publish retained discovery configs on every connect.")
    discovery_prefix: str = Field(
        default="homeassistant", min_length=1, max_length=64, description="HA discovery prefix."
    )
    presence_off_delay_s: int = Field(
        default=5, ge=1, le=3600, description="'Face present' turns off this long after the last face."
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not TOPIC_LEVEL_RE.match(value):
            raise ValueError("discovery_prefix must be one topic level of letters, digits, '_' or '-'")
        return value


class AccessPolicyConfig(_Strict):
    """Door access decisions derived from recognition events; fails closed on missing evidence."""

    enabled: bool = Field(default=False, description="Publish a granted/denied decision for every event.")
    allowed_groups: tuple[str, ...] = Field(
        default=(), max_length=1000, description="Groups whose members may enter; empty allows any group."
    )
    min_far_level: int = Field(
        default=4,
        ge=0,
        le=9,
        description="Least FAR level N (score meets the 1-in-10^N false-accept threshold).",
    )
    required_quality: Level = Field(
        default="NORMAL", description="Least quality level; NONE skips the check."
    )
    required_liveness: Level = Field(
        default="NORMAL", description="Least liveness level; NONE skips the check. A missing result denies."
    )


class PublishConfig(_Strict):
    """Everything the publishing layer needs. With `mqtt` unset, events go to stdout or `jsonl_path`."""

    mqtt: MqttConfig | None = Field(default=None, description="Broker; unset means no broker (stdout/file).")
    topic_prefix: str = Field(
        default="face-agent", min_length=1, max_length=128, description="First topic levels, e.g. 'site/a'."
    )
    device_id: str | None = Field(
        default=None, description="Topic level naming this agent; default: the host name, sanitised."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Persistent outbox.")
    snapshots: bool = Field(default=False, description="Publish a JPEG snapshot after each event.")
    snapshot_max_bytes: int = Field(
        default=256 * 1024, ge=1024, le=8 * 1024 * 1024, description="Larger snapshots are skipped (counted)."
    )
    stats_interval_s: float = Field(
        default=60.0, ge=1.0, le=86400.0, description="Period of the stats message in seconds."
    )
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="HA discovery."
    )
    access: AccessPolicyConfig = Field(default_factory=AccessPolicyConfig, description="Access decisions.")
    jsonl_path: Path | None = Field(
        default=None, description="Without a broker: append JSON lines to this file instead of stdout."
    )
    jsonl_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=4096,
        le=1024**3,
        description="The JSON-lines file is rotated to '<name>.1' beyond this size.",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        levels = value.split("/")
        if not all(TOPIC_LEVEL_RE.match(level) for level in levels):
            raise ValueError(
                "topic_prefix: '/'-separated levels of letters, digits, '_' or '-' (no wildcards)"
            )
        return value

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str | None) -> str | None:
        if value is not None and not TOPIC_LEVEL_RE.match(value):
            raise ValueError("device_id: 1-64 letters, digits, '_' or '-'")
        return value

    def resolved_device_id(self) -> str:
        """The configured device id, or the host name reduced to topic-safe characters."""
        if self.device_id is not None:
            return self.device_id
        cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64].strip("-")
        return cleaned or "face-agent"


def read_password(cfg: MqttConfig, env: dict[str, str] | None = None) -> str | None:
    """The broker password from its file or systemd credential; ConfigError when it cannot be read."""
    env = dict(os.environ) if env is None else env
    if cfg.password_credential is not None:
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"mqtt.password_credential={cfg.password_credential!r} but $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or use password_file)"
            )
        path = Path(directory) / cfg.password_credential
    elif cfg.password_file is not None:
        path = cfg.password_file
    else:
        return None
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the MQTT password from {path}: {exc}") from exc
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("MQTT password file %s is readable by group/others; chmod 600 it", path)
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"the MQTT password file {path} is empty")
    return password
