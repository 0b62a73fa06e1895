"""HTTP API: the native REST API and the cloud-compatible endpoints (JD, Face++, jumdata) on one server.

Owns request parsing, auth, routing and the families' response shapes; imports gallery, gates, capture (image
decoding) and ops, and is given the engine; never recognition, app or cli.

Typical wiring::

    ctx = build_context(api_config, engine, gallery)       # thresholds from the model manifest
    server = ApiServer(api_config, ctx).start()
    ...
    server.stop()
"""

from importlib import import_module
from typing import Any

# Submodules load on first use: agent.config imports agent.api.config, and the server side imports
# agent.config in turn (image limits), so nothing here may import eagerly.
_EXPORTS = {
    "Authenticator": "agent.api.auth",
    "native_header": "agent.api.auth",
    "native_signature": "agent.api.auth",
    "ApiConfig": "agent.api.config",
    "ApiCredential": "agent.api.config",
    "load_secrets": "agent.api.config",
    "openapi_document": "agent.api.openapi",
    "ApiServer": "agent.api.server",
    "build_context": "agent.api.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agent.api' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
