"""Login and logout: the console password (scrypt file) or an API key with its secret."""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.console.deps import login_keys
from agent.console.passwords import MAX_LENGTH, read_hash, verify_password
from agent.console.security import COOKIE, same_origin
from agent.console.web import Console, base
from agent.errors import ConfigError

log = logging.getLogger(__name__)


def routes(console: Console) -> list[Route]:
    async def login_page(request: Request) -> Response:
        if console.session_of(request) is not None:
            return RedirectResponse(f"{base(request)}/live", status_code=303)
        return _page(console, request, None)

    async def login_post(request: Request) -> Response:
        return await _login(console, request)

    async def logout(request: Request) -> Response:
        session = console.session_of(request)
        if session is None:
            return PlainTextResponse("login required", status_code=401)
        refusal = await console.check_post(request, session)
        if refusal is not None:
            return refusal
        console.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{base(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=base(request) or "/")
        return response

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _page(console: Console, request: Request, error: str | None, status_code: int = 200) -> Response:
    keys = bool(login_keys(console.deps))
    response = console.render(request, "login.html", None, error=error, keys=keys)
    response.status_code = status_code
    return response


async def _login(console: Console, request: Request) -> Response:
    # Login CSRF: a form posted from another site would log the victim into the attacker's session.
    if not same_origin(dict(request.headers), request.url.scheme):
        return PlainTextResponse("cross-origin request refused", status_code=403)
    ip = request.client.host if request.client else "?"
    wait = console.limiter.attempt(ip)
    if wait > 0:
        response = _page(console, request, "too many login attempts: wait and try again", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    form = await console.form(request)
    user = await console.blocking(_check, console, _text(form.get("key")), _text(form.get("password")))
    if user is None:
        return _page(console, request, "wrong password or key", 401)
    console.sessions.end(request.cookies.get(COOKIE))  # a fresh token at each login, never a reused one
    session = console.sessions.create(user)
    response = RedirectResponse(f"{base(request)}/live", status_code=303)
    console.set_cookie(response, request, session.token)
    return response


def _text(value: object) -> str:
    return value[: MAX_LENGTH + 1] if isinstance(value, str) else ""


def _check(console: Console, key: str, password: str) -> str | None:
    """The user name on success: "admin" for the console password, "key:<id>" for an API key."""
    if not password:
        return None
    if key:
        secret = login_keys(console.deps).get(key)
        ok = secret is not None and hmac.compare_digest(secret.encode(), password.encode())
        return f"key:{key}" if ok else None
    try:  # read each time: `console passwd` takes effect at once
        record = read_hash(console.deps.password_path)
    except ConfigError as exc:
        log.error("console login: %s", exc.message)
        return None
    return "admin" if record is not None and verify_password(record, password) else None
