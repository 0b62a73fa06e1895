"""`face-agent sync`: mirror the hub's groups into the local gallery without cameras.

For provisioning a door before its first start (`--once`: pull until caught up, then exit), and for
checking a device's credentials and its hub from a shell. `face-agent run` with the same `sync:` section
does the same beside the cameras; the two take the same state lock, so they never write one gallery at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("agent.sync")


def cmd_sync(args: argparse.Namespace) -> int:
    from agent.config import load_agent_config
    from agent.errors import ConfigError
    from agent.gallery.variants import open_gallery
    from agent.inference.engine import FaceEngine
    from agent.ops.lock import StateLock
    from agent.ops.log import setup_logging
    from agent.sync.client import HubClient, HubRefused, HubUnavailable, read_secret
    from agent.sync.edge import EdgeSyncer, engine_reembedder

    cfg = load_agent_config(args.config, os.environ, state_dir=args.state_dir)
    if cfg.sync is None:
        raise ConfigError("the config has no sync: section (docs/sync.md)")
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    setup_logging(cfg.log, os.environ)
    lock = StateLock(cfg.state_dir, "run")  # the same lock as `run`: one writer of this gallery
    lock.acquire()
    try:
        client = HubClient(cfg.sync, read_secret(cfg.sync, os.environ.get("CREDENTIALS_DIRECTORY")))
        engine = FaceEngine(cfg.engine)
        gallery = open_gallery(cfg.gallery, engine)
        try:
            syncer = EdgeSyncer(cfg.sync, gallery, engine.model_id, client, engine_reembedder(engine))
            if args.once:
                pause = min(cfg.sync.interval_s, 5.0)
                return _once(syncer, args.timeout, (HubRefused, HubUnavailable), pause)
            return _forever(syncer)
        finally:
            gallery.close(cfg.stop_timeout_s)
    finally:
        lock.release()


def _once(syncer, timeout: float, expected: tuple[type[Exception], ...], pause_s: float) -> int:
    """Rounds until every group is caught up; a round that leaves a group behind (refused, not granted)
    is retried after `pause_s`, not at once, so a stuck group does not hammer the hub."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while True:
        try:
            done = syncer.sync_once()
        except expected as exc:
            print(json.dumps({"ok": False, "error": str(exc), **syncer.status()}))
            return 1
        if done or time.monotonic() + pause_s > deadline:
            status = syncer.status()
            print(json.dumps({"ok": done, "seconds": round(time.monotonic() - t0, 3), **status}))
            return 0 if done else 1
        time.sleep(pause_s)  # pacing between retries, not a synchronisation


def _forever(syncer) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    syncer.start()
    stop.wait()
    syncer.stop()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="mirror the hub's groups into the local gallery (no cameras)")
    p.add_argument("--config", type=Path, default=None, help="YAML config with a sync: section")
    p.add_argument("--state-dir", type=Path, default=None, help="overrides the file's state_dir")
    p.add_argument("--once", action="store_true", help="pull until caught up, print the status, exit")
    p.add_argument("--timeout", type=float, default=600.0, help="--once: give up after this many seconds")
    p.set_defaults(func=cmd_sync)
