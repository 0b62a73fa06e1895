"""Command line: `face-agent <command>`. Each command builds only the parts it needs."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent import __version__
from agent.errors import AgentError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="face-agent", description="Edge face recognition agent")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"face-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    from agent.cli import bench, console, detect, doctor, erase, evaluate, run, sync

    for command in (run, sync, detect, evaluate, bench):
        command.add_parser(sub)
    doctor.add_parser(sub)  # install checks; erase: complete erasure of one person
    erase.add_parser(sub)
    console.add_parser(sub)  # the web console's password

    from agent.cli.tools import add_tool_commands  # enroll, gallery, serve, hub; handlers import lazily

    add_tool_commands(sub)
    return p


# Commands that create or write the state dir (gallery embeddings and thumbnails, the event outbox; doctor:
# the runtimes' caches in the service user's home, which is the state dir). They run with umask 077, as the
# systemd unit does (UMask=0077), so a quick start from a shell creates biometric state 0700 / 0600 too, not
# 0755 / 0644 (which `doctor` then rightly FAILs).
_WRITES_STATE = {"run", "sync", "serve", "enroll", "gallery", "erase", "hub", "doctor", "console"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _WRITES_STATE:
        os.umask(0o077)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # 78 = EX_CONFIG: systemd's RestartPreventExitStatus stops a restart loop
        print(f"face-agent: configuration error: {exc.message}", file=sys.stderr)
        return 78
    except AgentError as exc:
        print(f"face-agent: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in eval, bench, enroll ...: no traceback; 130 = 128 + SIGINT
        print("face-agent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
