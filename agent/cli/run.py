"""`face-agent run`: the camera agent (agent/app.py wires it), or `--validate-config` to check a file."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def cmd_run(args: argparse.Namespace) -> int:
    """`face-agent run`: the camera agent. A bad config raises ConfigError: exit 78 (see main)."""
    from agent.config import load_agent_config

    cfg = load_agent_config(args.config, os.environ, source=args.source, state_dir=args.state_dir)
    if args.validate_config:
        from agent.gates.challenge import ChallengeConfig
        from agent.gates.stops import liveness_summary

        print(f"configuration OK: {len(cfg.cameras)} camera(s), group {cfg.recognition.group_id!r}")
        for cam in cfg.cameras:
            level = cam.liveness_level or cfg.recognition.liveness_level
            steps = cam.liveness_challenge.steps if cam.liveness_challenge is not None else None
            depth = cam.depth is not None
            default = cam.liveness_challenge is None or cam.liveness_challenge == ChallengeConfig()
            ir = cam.ir is not None
            summary = liveness_summary(
                level, steps, depth, depth and cam.depth.require, default, ir, ir and cam.ir.require
            )
            print(f"  camera {cam.id}: liveness {level}: {summary}")
        return 0
    from agent.app import run_agent

    for handler in list(logging.getLogger().handlers):  # run_agent installs its own (journal-aware)
        logging.getLogger().removeHandler(handler)
    return run_agent(cfg, os.environ, config_path=args.config, source=args.source)


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the camera agent (capture, recognition, events)")
    r.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in defaults)")
    r.add_argument("--validate-config", action="store_true", help="check the config and exit (0 ok, 78 bad)")
    r.add_argument("--source", default=None, help="one camera from a device index, path or URL (overrides)")
    r.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="gallery and outbox folder (overrides the file's state_dir; default: $STATE_DIRECTORY, ./state)",
    )
    r.set_defaults(func=cmd_run)
