"""Live page: each camera's latest frame (JPEG, polled) with its faces drawn over it from a JSON poll."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from agent.console.security import Session
from agent.console.web import Console, json_no_store
from agent.ops.redact import scrub


def _cameras(console: Console) -> dict[str, Any]:
    """Per camera: the latest view and the pipeline's health numbers (state, fps, drops, last error scrubbed
    of credentials)."""
    obs, stats = console.deps.observer, console.deps.stats
    health: dict[str, Any] = dict((stats() if stats is not None else {}).get("cameras", {}))
    out: dict[str, Any] = {}
    for view in obs.views() if obs is not None else []:
        out[view.camera_id] = {
            "seq": view.seq,
            "captured_at": view.captured_at,
            "width": view.width,
            "height": view.height,
            "faces": [d.as_json() for d in view.detections],
        }
    for cam_id, h in health.items():
        entry = out.setdefault(cam_id, {"seq": None, "faces": []})
        keys = ("state", "fps", "processed", "faces", "tracks", "reconnects", "last_error")
        entry["health"] = {k: h.get(k) for k in keys}
        error = entry["health"]["last_error"]
        if error is not None:  # e.g. a stream that failed to open, named with its URL: no credentials shown
            entry["health"]["last_error"] = scrub(str(error))
    return out


async def page(request: Request, console: Console, session: Session) -> Response:
    available = console.deps.observer is not None
    cams = await console.blocking(_cameras, console) if available else {}
    return console.render(
        request,
        "live.html",
        session,
        available=available,
        cameras=sorted(cams),
        refresh_ms=console.deps.config.live_refresh_ms,
    )


async def cameras_json(request: Request, console: Console, session: Session) -> Response:
    if console.deps.observer is None:
        return json_no_store({"available": False, "cameras": {}})
    return json_no_store({"available": True, "cameras": await console.blocking(_cameras, console)})


async def frame_jpeg(request: Request, console: Console, session: Session) -> Response:
    obs = console.deps.observer
    raw = request.query_params.get("seq", "")
    seq = int(raw) if raw.isdigit() and len(raw) < 19 else None
    data = await console.blocking(obs.frame_jpeg, request.path_params["camera"], seq) if obs else None
    if data is None:
        return PlainTextResponse("no frame from this camera yet", status_code=404)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
