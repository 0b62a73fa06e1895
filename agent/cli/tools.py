"""Sub-commands `enroll`, `gallery`, `serve` and `hub` of `face-agent`. Only argparse here: each handler
imports its module when it runs, so `face-agent --help` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (the same file as `run`)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state folder holding gallery/ (default: $STATE_DIRECTORY or ./state)",
    )


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime", choices=["openvino", "onnxruntime"], default=None, help="override engine.runtime"
    )
    p.add_argument("--model", default=None, help="override engine.embedder.model")
    p.add_argument(
        "--precision", choices=["int8", "fp32"], default=None, help="override engine.embedder.precision"
    )


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.cli.enroll import enroll_main

    return enroll_main(args)


def cmd_gallery(args: argparse.Namespace) -> int:
    from agent.cli.gallery import gallery_main

    return gallery_main(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from agent.cli.serve import serve_main

    return serve_main(args)


def cmd_hub(args: argparse.Namespace) -> int:
    from agent.cli.hub import hub_main

    return hub_main(args)


def _hub_commands(sub: Any) -> None:
    """`hub devices add|list|grant|ungrant|revoke`, `hub feed`, `hub compact`, `hub migrate` (docs/sync.md,
    docs/hub.md)."""
    h = sub.add_parser("hub", help="devices allowed to pull this hub's groups, and its change feed")
    hsub = h.add_subparsers(dest="action", required=True)
    d = hsub.add_parser("devices", help="add, list, grant, ungrant or revoke devices")
    dsub = d.add_subparsers(dest="devices_action", required=True)
    da = dsub.add_parser("add", help="new device; prints its secret once (or writes --secret-file)")
    da.add_argument("device_id", help="1..128 of [0-9A-Za-z_.-], the edge's sync.device_id")
    da.add_argument("--group", action="append", default=None, help="grant this group (repeatable)")
    da.add_argument("--info", default="", help="free text: where the device is, who owns it")
    da.add_argument("--secret-file", type=Path, default=None, help="write the secret here (mode 0600)")
    dl = dsub.add_parser("list", help="devices, state and grants (never secrets)")
    dl.add_argument("--json", action="store_true")
    dg = dsub.add_parser("grant", help="let a device mirror a group")
    du = dsub.add_parser("ungrant", help="take a group back (the device erases its mirror)")
    for p in (dg, du):
        p.add_argument("device_id")
        p.add_argument("--group", action="append", required=True, help="group id (repeatable)")
    dr = dsub.add_parser("revoke", help="refuse a device for good (it erases what it mirrors)")
    dr.add_argument("device_id")
    hf = hsub.add_parser("feed", help="change feed size: operations, oldest, head, floor")
    hf.add_argument("--json", action="store_true")
    hc = hsub.add_parser("compact", help="drop feed operations past hub.feed_keep_ops / feed_keep_days now")
    hm = hsub.add_parser(
        "migrate", help="create or upgrade the PostgreSQL schema of hub.database (SQLite migrates by itself)"
    )
    for p in (da, dl, dg, du, dr, hf, hc, hm):
        _common(p)
    h.set_defaults(func=cmd_hub)


def add_tool_commands(sub: Any) -> None:
    """Register enroll, gallery, serve and hub on the `face-agent` sub-parser collection."""
    e = sub.add_parser("enroll", help="enrol faces from a folder per person or a CSV")
    e.add_argument(
        "source",
        type=Path,
        help="DIR with DIR/<person>/*.jpg|png|webp|bmp, or a CSV with columns path, outer_id[, user_info]",
    )
    _common(e)
    _engine(e)
    e.add_argument("--group", default="default", help="gallery group (default: default)")
    e.add_argument("--create-group", action="store_true", help="create the group if it does not exist")
    e.add_argument("--quality", choices=LEVELS, default="NORMAL", help="quality gate level (default NORMAL)")
    e.add_argument("--largest-face", action="store_true", help="enrol the largest face of a group photo")
    e.add_argument("--batch-size", type=int, default=16, help="faces per gallery commit")
    e.add_argument("--workers", type=int, default=1, help="images analysed at once")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument(
        "--json-lines",
        action="store_true",
        help="one JSON line per image as it completes (enrolled = on disk), then the summary",
    )
    e.set_defaults(func=cmd_enroll)

    g = sub.add_parser("gallery", help="list, export, import or erase gallery content")
    gsub = g.add_subparsers(dest="action", required=True)
    gl = gsub.add_parser("list", help="groups, persons, face counts and models")
    gl.add_argument("--group", default=None, help="one group, with its persons")
    gl.add_argument("--json", action="store_true")
    ge = gsub.add_parser("export", help="write a portable archive (JSON lines; .gz compresses)")
    ge.add_argument("--out", type=Path, required=True)
    ge.add_argument("--group", action="append", default=None, help="only this group (repeatable)")
    gi = gsub.add_parser("import", help="import an archive (idempotent)")
    gi.add_argument("file", type=Path)
    gi.add_argument(
        "--allow-unknown-models",
        action="store_true",
        help="import embeddings of models this agent's manifest does not list",
    )
    gd = gsub.add_parser("delete", help="erase a group, a person or a face completely")
    gd.add_argument("--group", required=True)
    target = gd.add_mutually_exclusive_group()
    target.add_argument("--person", default=None, help="outer_id of the person to erase")
    target.add_argument("--face", default=None, help="face_id to erase")
    gd.add_argument("--yes", action="store_true", help="confirm erasing a whole group")
    for p in (gl, ge, gi, gd):
        _common(p)
    g.set_defaults(func=cmd_gallery)

    s = sub.add_parser("serve", help="serve the HTTP API (native + cloud-compatible) until SIGTERM")
    _common(s)
    _engine(s)
    s.add_argument("--host", default=None, help="override api.host")
    s.add_argument("--port", type=int, default=None, help="override api.port (0: any free port)")
    s.add_argument(
        "--allow-unauthenticated-loopback",
        action="store_true",
        help="let credential-less requests from 127.0.0.1/::1 through (api.allow_unauthenticated_loopback)",
    )
    s.set_defaults(func=cmd_serve)
    _hub_commands(sub)
