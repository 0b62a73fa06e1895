"""Status page: model, gallery sizes, outbox and MQTT, sync, disk, and the config in force (masked).

The config holds no secret values itself (API, MQTT and sync secrets are files or systemd credentials it
names), but a PostgreSQL DSN may carry a password, a camera source (URL or GStreamer pipeline) may carry
the camera's, and a future field might: every value under a key that names a password, secret, token or key
is masked, and every string on the page (config and state alike) goes through agent/ops/redact.py.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent.console.security import Session
from agent.console.web import Console
from agent.ops.redact import MASK, scrub, scrub_all

SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|(^|_)key(s)?($|_)|credential|dsn", re.IGNORECASE)


def mask(value: Any, key: str = "") -> Any:
    """A copy of config data with secrets masked (module doc)."""
    if isinstance(value, Mapping):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, key) for v in value]
    if value is not None and SECRET_KEY.search(key):
        return MASK
    return scrub(value) if isinstance(value, str) else value


def _gallery(console: Console) -> list[dict[str, Any]]:
    gallery, model = console.ctx.gallery, console.ctx.model_id
    out = []
    for g in gallery.list_groups():
        faces = gallery.store.fingerprint(g.group_id, model)[0]
        out.append({"group_id": g.group_id, "persons": len(gallery.list_persons(g.group_id)), "faces": faces})
    return out


def _disk(console: Console) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(console.deps.state_dir)
    except OSError as exc:
        return {"error": str(exc)}
    return {
        "path": str(console.deps.state_dir),
        "free_gb": round(usage.free / 1e9, 2),
        "total_gb": round(usage.total / 1e9, 2),
        "free_pct": round(100 * usage.free / usage.total, 1) if usage.total else None,
    }


def collect(console: Console) -> dict[str, Any]:
    deps, engine, scores = console.deps, console.ctx.engine, console.ctx.scores
    sink = dict(deps.sink_stats()) if deps.sink_stats is not None else None
    cfg = engine.config
    return scrub_all(
        {
            "model": {
                "model_id": console.ctx.model_id,
                "detector": cfg.detector.model,
                "embedder": cfg.embedder.model,
                "precision": cfg.embedder.precision,
                "runtime": cfg.runtime.kind,
            },
            "thresholds": {far: round(float(scores.cosine(s)), 4) for far, s in scores.thresholds().items()},
            "gallery": _gallery(console),
            "mqtt": None if sink is None else {k: v for k, v in sink.items() if k != "outbox"},
            "outbox": None if sink is None else sink.get("outbox"),
            "sync": dict(deps.sync_status()) if deps.sync_status is not None else None,
            "pipeline": _pipeline(deps.stats() if deps.stats is not None else None),
            "disk": _disk(console),
            "engine_gate_rejected": console.ctx.gate.rejected,
            "config": mask(dict(deps.config_in_force())) if deps.config_in_force is not None else None,
        }
    )


def _pipeline(stats: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {"events": stats.get("events"), "frame_errors": stats.get("frame_errors")}


async def page(request: Request, console: Console, session: Session) -> Response:
    import json

    data = await console.blocking(collect, console)
    config_text = json.dumps(data.pop("config"), indent=2, default=str) if data.get("config") else None
    return console.render(request, "status.html", session, data=data, config_text=config_text)
