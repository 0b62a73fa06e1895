"""The console's ASGI app: its routes, built on agent/console/web.py's gate and limits.

Starlette does the routing, form parsing (python-multipart, with part and file limits), static files and
templates (Jinja2, autoescaped); agent/console/security.py holds what it has no piece for.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from agent.console import live, login, people, review, status
from agent.console.deps import ConsoleDeps, check_console_login
from agent.console.limits import Limits
from agent.console.web import HERE, Console, base


def build_console(deps: ConsoleDeps) -> ASGIApp:
    """The console as an ASGI app, to be mounted at /console. Raises ConfigError when nobody could log in."""
    check_console_login(deps)
    console = Console(deps)
    g = console.guard
    routes = [
        Route("/", lambda r: RedirectResponse(f"{base(r)}/live", status_code=303)),
        *login.routes(console),
        Route("/live", g(live.page, page=True)),
        Route("/live/cameras.json", g(live.cameras_json, page=False)),
        Route("/live/{camera}/frame.jpg", g(live.frame_jpeg, page=False)),
        Route("/people", g(people.page, page=True)),
        Route("/faces/{face_id}/thumb.jpg", g(people.thumbnail, page=False)),
        *[Route(f"/people/{n}", g(fn, page=False), methods=["POST"]) for n, fn in people.ACTIONS.items()],
        Route("/review", g(review.page, page=True)),
        Route("/review/{face}/thumb.jpg", g(review.thumbnail, page=False)),
        *[Route(f"/review/{n}", g(fn, page=False), methods=["POST"]) for n, fn in review.ACTIONS.items()],
        Route("/status", g(status.page, page=True)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    return Limits(app, deps.config.max_upload_bytes, deps.api.socket_timeout_s, session_of=console.session_of)
