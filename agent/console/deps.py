"""What the console is given by its wiring (agent/app.py for `run`, agent/cli/serve.py for `serve`).

Everything the camera loop offers is optional: `serve` has no cameras, so its live and review pages say so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api.config import ApiConfig
from agent.api.service import ApiContext
from agent.console.config import ConsoleConfig
from agent.console.passwords import read_hash
from agent.errors import ConfigError
from agent.recognition.observe import FrameObserver


@dataclass
class ConsoleDeps:
    ctx: ApiContext  # engine behind its gate, gallery, matcher, score map, quality gate
    config: ConsoleConfig
    api: ApiConfig  # TLS (Secure cookies) and the API keys that may log in
    state_dir: Path
    api_secrets: Mapping[str, str] = field(default_factory=dict)  # key -> secret (agent.api.load_secrets)
    group_id: str | None = None  # the group the cameras match against (review assigns into it)
    observer: FrameObserver | None = None  # live frames and recent faces; None in `serve`
    stats: Callable[[], Mapping[str, Any]] | None = None  # RecognitionPipeline.stats (per-camera state/fps)
    sink_stats: Callable[[], Mapping[str, Any]] | None = None  # EventSink.stats: MQTT state, outbox depth
    sync_status: Callable[[], Mapping[str, Any]] | None = None  # EdgeSyncer.status
    config_in_force: Callable[[], Mapping[str, Any]] | None = None  # the whole config, as JSON data
    on_gallery_change: Callable[[], None] | None = None  # e.g. republish the retained gallery version

    @property
    def password_path(self) -> Path:
        return self.config.password_path(self.state_dir)


def login_keys(deps: ConsoleDeps) -> dict[str, str]:
    """API keys that may log in: enabled, allowed the native API (the one that manages the gallery)."""
    if not deps.config.allow_api_keys:
        return {}
    return {
        c.key: deps.api_secrets[c.key]
        for c in deps.api.credentials
        if c.enabled and "native" in c.apis and c.key in deps.api_secrets
    }


def check_console_login(deps: ConsoleDeps) -> None:
    """Start-up check: an enabled console needs a password file or an API key to log in with."""
    if not deps.config.enabled:
        return
    path = deps.password_path
    has_password = path.exists() and read_hash(path) is not None
    if not has_password and not login_keys(deps):
        raise ConfigError(
            f"console.enabled but nobody can log in: no console password at {path} (set one with "
            "`face-agent console passwd`) and no enabled API key allowed the native API (api.credentials)"
        )
