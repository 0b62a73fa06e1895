"""Routing: each API family lists its routes; the router finds the handler for a method and a path.

Pure (no sockets): the families import this module and server.py imports the families, so nothing here may
import server.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from agent.api.common import ApiError, Request, Response

Handler = Callable[[Request, dict[str, str]], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    family: str
    template: str = ""  # the path as written, e.g. /api/v1/groups/{group_id} (checked against the OpenAPI)


def route(method: str, template: str, handler: Handler, family: str) -> Route:
    """`/api/v1/groups/{group_id}` -> a regex with one named group per `{name}` (one path segment)."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return Route(method, re.compile(f"^{regex}$"), handler, family, template)


class Family(Protocol):
    name: str
    prefix: str

    def routes(self) -> list[Route]: ...

    def error(self, exc: Exception, req: Request) -> Response: ...


class Router:
    def __init__(self, families: list[Family], fallback: Family) -> None:
        self.families = families
        self.fallback = fallback
        self.routes = [r for f in families for r in f.routes()]

    def family_for(self, path: str) -> Family:
        for fam in self.families:
            if fam.prefix and path.startswith(fam.prefix):
                return fam
        return self.fallback

    def dispatch(self, req: Request) -> Response:
        allowed = False
        for r in self.routes:
            m = r.pattern.match(req.path)
            if m is None:
                continue
            if r.method != req.method:
                allowed = True
                continue
            try:
                params = {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}
            except UnicodeDecodeError as exc:
                raise ApiError("bad_argument", "path is not valid percent-encoded UTF-8") from exc
            return r.handler(req, params)
        if allowed:
            raise ApiError("method_not_allowed", f"{req.method} is not allowed on {req.path}")
        raise ApiError("not_found", f"no API at {req.path}")
