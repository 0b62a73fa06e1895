"""`face-agent serve`: the HTTP API alone (no cameras), and the config the offline tools share.

`ServeConfig` holds the slices `serve`, `enroll` and `gallery` need: engine, gallery, API, logging. It is read
from the same YAML file as `face-agent run`; the sections only `run` uses (cameras, recognition, publish,
metrics) may be present and are ignored here, anything else unknown is an error.

With a `hub:` section the same server also answers the devices' /v1/sync feed (docs/sync.md), compacts the
feed and announces group changes over MQTT (agent/sync/hub.py).

Start order: logging -> engine (warm-up) -> gallery (indexes loaded) -> API context (FAR thresholds) -> hub
-> HTTP server -> hub threads -> READY=1. Stop (SIGTERM/SIGINT): STOPPING=1 -> HTTP server -> hub -> gallery
(indexes saved) -> exit 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.api.config import ApiConfig
from agent.config import EngineConfig, default_state_dir, parse_model, read_yaml_mapping
from agent.console.config import ConsoleConfig
from agent.errors import ConfigError, FatalError
from agent.gallery.config import GalleryConfig
from agent.ops.log import LogConfig
from agent.sync.config import HubConfig, place_hub_database

log = logging.getLogger("agent.serve")

# Top-level sections of the shared YAML file that belong to `face-agent run` only.
RUN_ONLY_SECTIONS = frozenset({"cameras", "recognition", "publish", "metrics", "sync"})


class ServeConfig(BaseModel):
    """What `face-agent serve` (and the enroll / gallery tools) read from the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(Path("state"), description="the gallery lives here unless gallery.path is set")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="detector/embedder/runtime")
    gallery: GalleryConfig = Field(description="local gallery; path defaults to <state_dir>/gallery")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API: address, credentials, bounds")
    log: LogConfig = Field(default_factory=LogConfig, description="log level and format")
    hub: HubConfig | None = Field(
        None, description="also serve a change feed of the groups to devices (docs/sync.md)"
    )
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, description="web console at /console (docs/console.md); off by default"
    )
    stop_timeout_s: float = Field(10.0, gt=0, le=300, description="bound of each step of a clean shutdown")

    @model_validator(mode="before")
    @classmethod
    def _gallery_path(cls, data: object) -> object:
        # The gallery and the API's replay store (used signatures survive a restart) default to the state dir.
        if isinstance(data, dict):
            state = Path(data.get("state_dir") or "state")
            gallery = data.get("gallery") or {}
            if isinstance(gallery, dict) and "path" not in gallery:
                data = {**data, "gallery": {**gallery, "path": state / "gallery"}}
            api = data.get("api") or {}
            if isinstance(api, dict) and "replay_store" not in api:
                data = {**data, "api": {**api, "replay_store": state / "api-replay.sqlite3"}}
            data = place_hub_database(data)
        return data

    @model_validator(mode="after")
    def _hub_transport(self) -> ServeConfig:
        if self.hub is not None:
            from agent.sync.hub import check_transport

            try:
                check_transport(self.hub, self.api)
            except ConfigError as exc:
                raise ValueError(exc.message) from exc
        return self


def _set(tree: dict[str, Any], dotted: str, value: object) -> None:
    """tree['a']['b'] = value for 'a.b', creating the dicts on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        node[key] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def load_serve_config(
    path: Path | None, environ: Mapping[str, str], overrides: Mapping[str, object] | None = None
) -> ServeConfig:
    """Read the YAML file (None: defaults), apply dotted-key overrides from flags (None values skipped),
    default the state directory to $STATE_DIRECTORY or ./state. Every problem is one ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path)
        data = {k: v for k, v in raw.items() if k not in RUN_ONLY_SECTIONS and k != "stop_timeout_s"}
        if "stop_timeout_s" in raw:
            data["stop_timeout_s"] = raw["stop_timeout_s"]
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, key, value)
    data.setdefault("state_dir", str(default_state_dir(environ)))
    return parse_model(ServeConfig, data, str(path) if path else "built-in config")  # type: ignore[return-value]


def run_serve(
    cfg: ServeConfig,
    environ: Mapping[str, str],
    stop: threading.Event,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until `stop` is set. Returns the exit code; start-up failures raise (ConfigError, FatalError)."""
    from agent.ops.lock import StateLock
    from agent.ops.log import setup_logging
    from agent.ops.systemd import HeartbeatRegistry, Notifier, WatchdogPinger, watchdog_interval

    setup_logging(cfg.log, environ)
    lock = StateLock(cfg.state_dir, "serve")
    lock.acquire()
    notifier = Notifier.from_env(environ)
    interval = watchdog_interval(environ)
    heartbeats = HeartbeatRegistry()
    watchdog = WatchdogPinger(notifier, heartbeats, interval) if interval else None
    if watchdog is not None:  # engine warm-up and index loading may take longer than the interval
        watchdog.start()
    try:
        _serve(cfg, notifier, stop, on_ready, heartbeats)
    finally:
        if watchdog is not None:
            watchdog.stop()
        lock.release()
    log.info("stopped")
    return 0


def _serve(
    cfg: ServeConfig,
    notifier: Any,
    stop: threading.Event,
    on_ready: Callable[[str], None] | None,
    heartbeats: Any,
) -> None:
    from agent.api import ApiServer, build_context
    from agent.gallery.variants import open_gallery
    from agent.inference.engine import FaceEngine
    from agent.sync.hub import HubService

    if not cfg.api.credentials and not cfg.api.allow_unauthenticated_loopback:
        log.warning(
            "no API credentials (api.credentials) and api.allow_unauthenticated_loopback is off: every "
            "request will be refused as unauthenticated; add credentials (docs/api.md) or, for a local try, "
            "pass --allow-unauthenticated-loopback"
        )
    engine = FaceEngine(cfg.engine)
    gallery = open_gallery(cfg.gallery, engine)
    try:
        if not gallery.wait_ready(cfg.gallery.ready_timeout_s):
            raise FatalError(f"gallery indexes not ready within {cfg.gallery.ready_timeout_s} s")
        ctx = build_context(cfg.api, engine, gallery)  # thresholds: api.score_thresholds, else the manifest
        source = "api.score_thresholds" if cfg.api.score_thresholds else "model manifest"
        cosines = cfg.api.score_thresholds or engine.thresholds
        log.info("FAR thresholds of %s from the %s: cosine %s", engine.model_id, source, dict(cosines))
        mounts = [("/console", _console(cfg, ctx))] if cfg.console.enabled else []
        mounts.append(("", _health_routes(heartbeats)))
        hub = HubService(cfg.hub, gallery, cfg.api) if cfg.hub is not None else None
        try:
            server = ApiServer(cfg.api, ctx, [hub.family] if hub is not None else [], mounts=mounts).start()
        except OSError as exc:  # port taken, address not on this host: fatal, said plainly
            if hub is not None:
                hub.stop(cfg.stop_timeout_s)
            raise FatalError(
                f"cannot listen on {cfg.api.host}:{cfg.api.port}: {exc}; choose another port with --port or "
                "api.port in the config"
            ) from exc
        try:
            if hub is not None:
                hub.start()
            if on_ready is not None:
                on_ready(server.url)
            notifier.notify("READY=1", f"STATUS=serving {engine.model_id} on {server.url}")
            # The watchdog's heartbeat is a real request answered by the server: a hung server stops it.
            beat = heartbeats.register("http-api", max(10.0, 4 * cfg.api.socket_timeout_s))
            while not stop.wait(2.0):
                if _answers(server.url + "/api/v1/health", cfg.api.socket_timeout_s):
                    beat.beat()
            notifier.notify("STOPPING=1")
            log.info("stopping")
        finally:
            server.stop(cfg.stop_timeout_s)
            if hub is not None:
                hub.stop(cfg.stop_timeout_s)
    finally:
        gallery.close(cfg.stop_timeout_s)


def _health_routes(heartbeats: Any) -> list[Any]:
    """/healthz (the heartbeats: the server's own health probe), /readyz (ready once the server answers:
    engine and gallery are loaded before it listens) and /metrics (loopback clients only) on the API port."""
    from agent.ops.health import HealthServer, Readiness
    from agent.ops.metrics import Registry
    from agent.ops.metrics_config import MetricsConfig

    readiness = Readiness(("serving",))
    readiness.set("serving", True, "engine and gallery loaded")
    health = HealthServer(MetricsConfig(), registry=Registry(), heartbeats=heartbeats, readiness=readiness)
    return health.routes(metrics_from_loopback_only=True)


def _console(cfg: ServeConfig, ctx: Any) -> Any:
    """The web console without cameras: people and status pages; live and review say there are none."""
    from agent.api import load_secrets
    from agent.console import ConsoleDeps, build_console

    deps = ConsoleDeps(
        ctx=ctx,
        config=cfg.console,
        api=cfg.api,
        state_dir=cfg.state_dir,
        api_secrets=load_secrets(cfg.api),
        config_in_force=lambda: cfg.model_dump(mode="json"),
    )
    return build_console(deps)  # ConfigError at start when nobody could log in


def _answers(url: str, timeout: float) -> bool:
    """Whether our own server answers its health route. Over HTTPS the certificate is not checked: this
    probes liveness of the process itself (the certificate names the host clients use, not 127.0.0.1)."""
    import ssl
    import urllib.request

    ctx = None
    if url.startswith("https://"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status == 200
    except OSError:
        return False


def serve_main(args: Any) -> int:
    """CLI entry: flags override the file; SIGTERM/SIGINT stop; exit 78 (EX_CONFIG) on a bad config."""
    import os

    overrides = {
        "state_dir": args.state_dir,
        "api.host": args.host,
        "api.port": args.port,
        "api.allow_unauthenticated_loopback": True if args.allow_unauthenticated_loopback else None,
        **engine_overrides(args),
    }
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cfg = load_serve_config(args.config, os.environ, overrides)
        for handler in list(logging.getLogger().handlers):  # run_serve installs its own (journal-aware)
            logging.getLogger().removeHandler(handler)

        def ready(url: str) -> None:  # one line on stdout so scripts (and tests) learn the port
            print(f"face-agent serve: listening on {url}", flush=True)

        return run_serve(cfg, os.environ, stop, ready)
    except ConfigError as exc:
        print(f"face-agent: configuration error: {exc.message}", file=sys.stderr)
        return 78
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def engine_overrides(args: Any) -> dict[str, object]:
    """Engine flags shared by serve and enroll (None: keep the config file's value)."""
    return {
        "engine.embedder.model": getattr(args, "model", None),
        "engine.embedder.precision": getattr(args, "precision", None),
        "engine.runtime.kind": getattr(args, "runtime", None),
    }
