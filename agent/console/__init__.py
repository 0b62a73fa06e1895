"""The device's web console at /console: live view, people, review of unknown faces, status and login.

Owns the console's pages, its login (password hash, server-side sessions, CSRF, rate limits) and the
security headers of everything it serves. It is an ASGI app (Starlette) mounted by the API's server on the
same port and origin; it calls the engine and gallery through the API's context (agent.api.service) and
reads the camera loop only through providers it is given (agent.recognition.observe). Nothing here is
imported by lower layers except the config slice.

Typical wiring::

    app = build_console(ConsoleDeps(ctx=ctx, config=cfg.console, api=api_cfg, state_dir=cfg.state_dir))
    ApiServer(api_cfg, ctx, mounts=[("/console", app)])
"""

from importlib import import_module
from typing import Any

# Loaded on first use: agent.config imports agent.console.config, which must not pull in Starlette.
_EXPORTS = {
    "build_console": "agent.console.app",
    "ConsoleDeps": "agent.console.deps",
    "check_console_login": "agent.console.deps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agent.console' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
