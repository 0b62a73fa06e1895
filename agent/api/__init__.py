"""HTTP API: the native REST API and the cloud-compatible endpoints (JD, Face++, jumdata) on one server.

Typical wiring::

    ctx = build_context(api_config, engine, gallery)       # thresholds from the model manifest
    server = ApiServer(api_config, ctx).start()
    ...
    server.stop()
"""

from agent.api.auth import Authenticator, native_header, native_signature
from agent.api.config import ApiConfig, ApiCredential, load_secrets
from agent.api.openapi import openapi_document
from agent.api.server import ApiServer, build_context

__all__ = [
    "ApiConfig",
    "ApiCredential",
    "ApiServer",
    "Authenticator",
    "build_context",
    "load_secrets",
    "native_header",
    "native_signature",
    "openapi_document",
]
