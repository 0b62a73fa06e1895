"""`face-agent hub devices add|list|grant|ungrant|revoke`, `hub feed`, `hub compact`, `hub migrate`: the
hub's devices and change feed, on the gallery database of the config (SQLite in the state directory, or
hub.database on PostgreSQL).

They open the store only (no engine, no indexes), so they run in a second beside a running `serve` or
`run`: the hub reads devices and grants on every request, so a revocation counts from its next request on.
`hub migrate` creates or upgrades a PostgreSQL schema (agent/gallery/pg_schema.py); hub processes refuse
to start on another schema version.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.errors import InputError


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ServeConfig, GalleryStore) of the config file and --state-dir."""
    from agent.cli.serve import load_serve_config
    from agent.gallery.store import GalleryStore

    cfg = load_serve_config(args.config, os.environ, {"state_dir": args.state_dir})
    return cfg, GalleryStore(cfg.gallery)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _open_secret_file(path: Path) -> int:
    """Open (create) the secret file before the device exists, so a path we cannot write fails before a
    secret is issued that nobody could ever read again. 0600 from the first byte on."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)  # emptied only once the device exists
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on open()
    except OSError as exc:
        raise InputError(f"--secret-file {path}: {exc.strerror or exc}", code="bad_path") from exc
    return fd


def _add(devices: Any, args: argparse.Namespace) -> None:
    target: Path | None = args.secret_file
    existed = target is not None and target.exists()
    fd = _open_secret_file(target) if target is not None else None
    try:
        secret = devices.add(args.device_id, args.group or [], args.info)
    except BaseException:
        if fd is not None:
            os.close(fd)
            if not existed and target is not None:
                target.unlink(missing_ok=True)
        raise
    groups = ", ".join(sorted(set(args.group or []))) or "none yet"
    if fd is not None:
        try:
            os.ftruncate(fd, 0)  # a refused add (device_exists) leaves an existing secret file intact
            os.write(fd, (secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        print(f"device {args.device_id} added (groups: {groups}); secret written to {target} (mode 0600)")
        return
    print(f"device {args.device_id} added (groups: {groups}). Its secret, shown only now:")
    print(secret)


def _list(devices: Any, args: argparse.Namespace) -> None:
    rows = devices.list()
    if args.json:
        out = [
            {
                "device_id": d.device_id,
                "revoked": d.revoked,
                "revoked_at": d.revoked_at,
                "created_at": d.created_at,
                "groups": list(d.groups),
                "info": d.info,
            }
            for d in rows
        ]
        print(json.dumps({"devices": out}, ensure_ascii=False, indent=1))
        return
    print(f"{'device':<24} {'state':<8} {'created':<19}  groups  info")
    for d in rows:
        state = "revoked" if d.revoked else "active"
        print(
            f"{d.device_id:<24} {state:<8} {_when(d.created_at):<19}  {','.join(d.groups) or '-'}  {d.info}"
        )


def _devices(store: Any, args: argparse.Namespace) -> None:
    from agent.sync.devices import DeviceStore

    devices = DeviceStore(store)
    if args.devices_action == "add":
        _add(devices, args)
    elif args.devices_action == "list":
        _list(devices, args)
    elif args.devices_action == "grant":
        for g in args.group:
            done = devices.grant(args.device_id, g)
            print(f"granted {g!r} to {args.device_id}" if done else f"{args.device_id} already has {g!r}")
    elif args.devices_action == "ungrant":
        for g in args.group:
            done = devices.ungrant(args.device_id, g)
            print(f"took {g!r} from {args.device_id}" if done else f"{args.device_id} did not have {g!r}")
    else:
        done = devices.revoke(args.device_id)
        print(
            f"revoked {args.device_id}: refused from its next request on; it erases what it mirrors"
            if done
            else f"{args.device_id} was already revoked"
        )


def _feed(store: Any, args: argparse.Namespace) -> None:
    from agent.gallery import feed

    st = feed.stats(store)
    if args.json:
        print(json.dumps({"ops": st.ops, "oldest": st.oldest, "head": st.head, "floor": st.floor}))
    else:
        print(f"feed: {st.ops} operation(s), oldest {st.oldest}, head {st.head}, floor {st.floor}")


def _compact(cfg: Any, store: Any) -> None:
    from agent.gallery import feed
    from agent.sync.config import HubConfig

    hub = cfg.hub or HubConfig()
    n = feed.compact(store, keep_ops=hub.feed_keep_ops, keep_s=hub.feed_keep_days * 86400)
    st = feed.stats(store)
    kept = f"keep {hub.feed_keep_ops} ops, {hub.feed_keep_days:g} days"
    print(f"compacted {n} operation(s) ({kept}); floor {st.floor}")


def _migrate(args: argparse.Namespace) -> int:
    from agent.cli.serve import load_serve_config
    from agent.gallery.db import PostgresDb
    from agent.gallery.pg_schema import migrate

    cfg = load_serve_config(args.config, os.environ, {"state_dir": args.state_dir})
    if cfg.gallery.database is None:
        print("hub.database is not set: the SQLite gallery migrates itself when it opens; nothing to do")
        return 0
    db = PostgresDb(cfg.gallery.database, pool_size=1, timeout_s=cfg.gallery.busy_timeout_s)
    try:
        before, after = migrate(db)
    finally:
        db.close()
    where = db.describe()
    print(f"{where}: schema {before} -> {after}" if before != after else f"{where}: schema {after}, current")
    return 0


def hub_main(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _migrate(args)
    cfg, store = _open(args)
    try:
        if args.action == "devices":
            _devices(store, args)
        elif args.action == "feed":
            _feed(store, args)
        else:
            _compact(cfg, store)
    finally:
        store.close()
    return 0
