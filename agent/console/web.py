"""The console's request plumbing: the shared `Console` state and the login gate in front of every page and
action (headers and body limits: agent/console/limits.py).

Every page and action goes through `Console.guard`: no session -> the login page (pages) or 401 (actions,
JSON, images); a POST also needs this origin and the session's CSRF token (403 otherwise). Engine and
gallery calls block, so handlers run them in Starlette's thread pool (`Console.blocking`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from agent.api.auth import is_loopback
from agent.console.deps import ConsoleDeps
from agent.console.security import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LoginLimiter,
    Session,
    SessionStore,
    csrf_ok,
    loopback_host,
    same_origin,
)
from agent.errors import AgentError

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SAFE = ("GET", "HEAD")  # methods that change nothing: no CSRF or origin check
Handler = Callable[[Request, "Console", Session], Awaitable[Response]]


class Console:
    """The console's shared state: its deps, sessions, login limiter and templates."""

    def __init__(self, deps: ConsoleDeps) -> None:
        cfg = deps.config
        self.deps = deps
        self.ctx = deps.ctx
        self.sessions = SessionStore(cfg.max_sessions, cfg.session_ttl_s, cfg.session_max_age_s)
        self.limiter = LoginLimiter(cfg.login_attempts_per_ip, cfg.login_attempts_global, cfg.login_window_s)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.loopback = Session("loopback", "loopback", secrets.token_urlsafe(32), 0.0, 0.0)

    # -- sessions ------------------------------------------------------------------------------------------

    def session_of(self, request: Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            return session
        if self.deps.config.allow_loopback_without_login and self._from_loopback(request):
            return self.loopback
        return None

    @staticmethod
    def _from_loopback(request: Request) -> bool:
        client = request.client.host if request.client else ""
        return is_loopback(client) and loopback_host(request.headers.get("host", ""))

    def set_cookie(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=self.deps.api.tls,
            path=base(request) or "/",
        )

    def render(self, request: Request, name: str, session: Session | None, **context: Any) -> Response:
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        data = {"base": base(request), "session": session, "flash": flash, **context}
        return self.templates.TemplateResponse(request, name, data)

    # -- the gate ------------------------------------------------------------------------------------------

    def guard(self, handler: Handler, *, page: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                if page and request.method in SAFE:
                    return RedirectResponse(f"{base(request)}/login", status_code=303)
                return PlainTextResponse("login required", status_code=401)
            if request.method not in SAFE:
                refusal = await self.check_post(request, session)
                if refusal is not None:
                    return refusal
            try:
                return await handler(request, self, session)
            except AgentError as exc:  # bad input, unknown group/person, busy engine: said, never a 500
                log.info("console %s %s refused: %s", request.method, request.url.path, exc)
                if request.method in SAFE:
                    return PlainTextResponse(exc.message, status_code=_status(exc))
                session.say("error", exc.message)
                return back(request)

        return endpoint

    async def check_post(self, request: Request, session: Session) -> Response | None:
        if not same_origin(dict(request.headers), request.url.scheme):
            return PlainTextResponse("cross-origin request refused", status_code=403)
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            form = await self.form(request)
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not csrf_ok(session, sent):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        return None

    async def form(self, request: Request) -> FormData:
        """The parsed form, cached on the request; sizes bounded by the config."""
        cached = request.scope.get("console.form")
        if cached is None:
            cfg = self.deps.config
            cached = await request.form(
                max_files=cfg.max_upload_files, max_fields=50, max_part_size=cfg.max_upload_bytes
            )
            request.scope["console.form"] = cached
        return cached

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)


def _status(exc: AgentError) -> int:
    code = getattr(exc, "code", "")
    if code.endswith("not_found"):
        return 404
    if code in ("busy", "engine_timeout", "unavailable"):
        return 503
    return 400


def base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def back(request: Request, fallback: str = "/live") -> RedirectResponse:
    """Back to the page a form was on (same origin only; checked before any action runs)."""
    target = request.headers.get("referer", "")
    origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if not target.startswith(origin + base(request) + "/"):
        target = base(request) + fallback
    return RedirectResponse(target, status_code=303)


def json_no_store(payload: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status_code, headers={"Cache-Control": "no-store"})
