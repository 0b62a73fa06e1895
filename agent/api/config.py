"""Configuration slice of the HTTP API: where it listens, who may call it, and every bound it enforces.

Secrets never live in the config file itself: each credential names a file (or a systemd credential, read
from $CREDENTIALS_DIRECTORY) holding the secret, loaded once at start-up by `load_secrets`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import ConfigError
from agent.gallery.config import DEFAULT_GROUP

ApiFamily = Literal["native", "jd", "faceplusplus", "jumdata"]
ALL_FAMILIES: tuple[ApiFamily, ...] = ("native", "jd", "faceplusplus", "jumdata")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiCredential(_Strict):
    key: str = Field(
        min_length=4,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="public key id: JD appkey, Face++ api_key, jumdata appId, native key",
    )
    secret_file: Path | None = Field(None, description="file whose first line is the secret")
    secret_credential: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="name of a systemd credential (LoadCredential=) holding the secret",
    )
    apis: list[ApiFamily] = Field(
        default_factory=lambda: list(ALL_FAMILIES),
        max_length=4,
        description="API families this key may call; others answer the family's 'not allowed' error",
    )
    enabled: bool = Field(True, description="a disabled key is refused with the family's 'disabled' error")

    @model_validator(mode="after")
    def _one_source(self) -> ApiCredential:
        if (self.secret_file is None) == (self.secret_credential is None):
            raise ValueError("give exactly one of secret_file or secret_credential")
        return self


class ApiConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="address to bind")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (tests)")
    credentials: list[ApiCredential] = Field(default_factory=list, max_length=1000)
    allow_unauthenticated_loopback: bool = Field(
        False,
        description="let requests without any credentials through when they come from 127.0.0.0/8 or ::1; "
        "requests from other addresses always need credentials",
    )
    signature_max_age_s: float = Field(
        300.0, ge=10, le=3600, description="how far a signed timestamp may be from now (both ways)"
    )
    replay_cache_size: int = Field(
        100_000, ge=100, le=10_000_000, description="signatures remembered to refuse replays"
    )
    replay_store: Path | None = Field(
        None,
        description="SQLite file keeping used signatures across restarts (`run` puts it in the state "
        "directory); None, or after a reboot: requests signed before the server started are refused",
    )
    max_handlers: int = Field(
        16, ge=1, le=1024, description="connections served at once; more are answered 503 at once"
    )
    max_body_bytes: int = Field(
        8_000_000, ge=10_000, le=200_000_000, description="largest request body, checked from Content-Length"
    )
    socket_timeout_s: float = Field(10.0, gt=0, le=600, description="idle socket read/write timeout")
    engine_concurrency: int = Field(2, ge=1, le=64, description="engine calls running at once")
    engine_queue: int = Field(8, ge=0, le=10_000, description="engine calls allowed to wait for a slot")
    engine_wait_s: float = Field(10.0, gt=0, le=600, description="longest wait for an engine slot")
    decode_pixels: int = Field(
        3 * 4096 * 4096,
        ge=1_000_000,
        le=2_000_000_000,
        description="pixels of decoded request images alive at once (3 bytes each): a larger burst waits up "
        "to engine_wait_s, then gets the family's busy answer (docs/api.md, Memory)",
    )
    compat_image_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, le=100_000_000, description="cloud-compatible image size limit (2 MB)"
    )
    compat_min_side: int = Field(48, ge=1, le=4096, description="cloud-compatible smallest image side")
    compat_max_side: int = Field(4096, ge=16, le=20000, description="largest side for create/search")
    compare_max_side: int = Field(2048, ge=16, le=20000, description="largest side for JD compare")
    native_image_bytes: int = Field(
        6_000_000, ge=1024, le=100_000_000, description="native API image size limit (decoded)"
    )
    face_token_cache: int = Field(
        1024, ge=0, le=1_000_000, description="detected query faces kept so their face_token can be searched"
    )
    face_token_ttl_s: float = Field(72 * 3600.0, gt=0, le=30 * 86400, description="face_token lifetime")
    compare_quality: Literal["NONE", "LOW", "NORMAL", "HIGH"] = Field(
        "NONE",
        description="quality level JD compare enforces (InvalidFaceQuality / InvalidFacePosture); NONE "
        "reports posture and blur without refusing",
    )
    jd_default_group: str | None = Field(
        DEFAULT_GROUP,
        min_length=1,
        max_length=1024,
        description="group_id JD faceCreate / faceSearch use without groupId and groupName (faceCreate "
        "creates it if missing); None: one of them is required",
    )
    jumdata_default_group: str | None = Field(
        None,
        max_length=1024,
        description="group searched by jumdata multi-search without group_id; None: all",
    )
    score_thresholds: dict[Literal["1e-3", "1e-4", "1e-5", "1e-6"], float] | None = Field(
        None,
        description="cosine thresholds at each FAR, overriding the model manifest (for a model whose "
        "manifest has no calibration yet)",
    )

    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) to serve HTTPS with; with tls_key_file. Unset: plain HTTP",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")

    @model_validator(mode="after")
    def _unique_keys(self) -> ApiConfig:
        keys = [c.key for c in self.credentials]
        if len(keys) != len(set(keys)):
            raise ValueError("credential keys must be unique")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("api.tls_cert_file and api.tls_key_file go together: set both or neither")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def load_secrets(config: ApiConfig, credentials_dir: str | None = None) -> dict[str, str]:
    """key -> secret, read from the files / systemd credentials named in the config. Fails loudly."""
    cred_dir = credentials_dir if credentials_dir is not None else os.environ.get("CREDENTIALS_DIRECTORY")
    out: dict[str, str] = {}
    for cred in config.credentials:
        if cred.secret_file is not None:
            path = cred.secret_file
        else:
            if not cred_dir:
                raise ConfigError(
                    f"credential {cred.key}: $CREDENTIALS_DIRECTORY is not set (systemd LoadCredential)"
                )
            path = Path(cred_dir) / str(cred.secret_credential)
        try:
            secret = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"credential {cred.key}: cannot read secret from {path}: {exc}") from exc
        if len(secret) < 8:
            raise ConfigError(f"credential {cred.key}: secret in {path} is shorter than 8 characters")
        out[cred.key] = secret
    return out
