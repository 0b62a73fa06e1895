"""`face-agent console passwd`: set the web console's password (a scrypt hash, docs/console.md)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from agent.errors import InputError


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:  # scripts and tests: the first line of stdin
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new console password: ")
    if getpass.getpass("again: ") != first:
        raise InputError("the two passwords differ; nothing changed", code="password_mismatch")
    return first


def cmd_console(args: argparse.Namespace) -> int:
    from agent.cli.serve import load_serve_config
    from agent.console.passwords import write_password

    cfg = load_serve_config(args.config, os.environ, {"state_dir": args.state_dir})
    path = cfg.console.password_path(cfg.state_dir)
    write_password(path, _read_password(args))
    print(f"console password stored in {path} (scrypt, mode 0600)")
    if not cfg.console.enabled:
        print("note: console.enabled is false in this config: the console is not served yet")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("console", help="the web console: set its password")
    csub = c.add_subparsers(dest="action", required=True)
    p = csub.add_parser("passwd", help="set the console password (asked twice, stored as a scrypt hash)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (console.password_file)")
    p.add_argument("--state-dir", type=Path, default=None, help="state folder ($STATE_DIRECTORY or ./state)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    c.set_defaults(func=cmd_console)
