"""Configuration slice of the web console (`console:` in the run and serve config; docs/console.md).

The console is off unless `enabled`; it is served by the HTTP API's server (same origin, same TLS) under
`/console`, so it needs an `api:` section in `face-agent run`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PASSWORD_FILENAME = "console-password"


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="serve the web console at /console on the API's port")
    password_file: Path | None = Field(
        None,
        description="scrypt hash of the console password, written by `face-agent console passwd`; default "
        "<state_dir>/console-password",
    )
    allow_api_keys: bool = Field(
        True, description="an enabled API key allowed the native API may log in with its secret"
    )
    allow_loopback_without_login: bool = Field(
        False,
        description="pages answer without a login to requests from 127.0.0.0/8 or ::1 addressed to a "
        "loopback host name (a kiosk's own browser); everyone else still logs in",
    )
    session_ttl_s: float = Field(
        8 * 3600.0, ge=60, le=30 * 86400, description="a session idle this long ends"
    )
    session_max_age_s: float = Field(
        24 * 3600.0, ge=60, le=90 * 86400, description="a session ends this long after login, even if used"
    )
    max_sessions: int = Field(64, ge=1, le=10_000, description="sessions kept at once (the oldest goes)")
    login_attempts_per_ip: int = Field(
        5, ge=1, le=1000, description="login attempts per client IP per window"
    )
    login_attempts_global: int = Field(
        30, ge=1, le=100_000, description="login attempts from all clients together per window"
    )
    login_window_s: float = Field(60.0, ge=1, le=3600, description="the rate-limit window of login attempts")
    max_upload_bytes: int = Field(
        20_000_000, ge=10_000, le=200_000_000, description="largest form post (all photos of one upload)"
    )
    max_upload_files: int = Field(10, ge=1, le=100, description="photos in one upload at most")
    enroll_quality: Literal["NONE", "LOW", "NORMAL", "HIGH"] = Field(
        "NORMAL", description="quality level enrolment from the console requires (as `face-agent enroll`)"
    )
    review_enroll_faces: int = Field(
        3, ge=1, le=20, description="best-quality faces of a review cluster enrolled when it is assigned"
    )
    live_refresh_ms: int = Field(300, ge=100, le=10_000, description="how often the live page polls")

    def password_path(self, state_dir: Path) -> Path:
        return self.password_file if self.password_file is not None else Path(state_dir) / PASSWORD_FILENAME
