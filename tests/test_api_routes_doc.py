"""The OpenAPI document is written by hand (the compatible families' shapes do not come from a framework), so
this test keeps it honest: every route the server dispatches is in /openapi.json with its method, and every
documented operation is a route, for the built-in families and the hub's /v1/sync family."""

from __future__ import annotations

from test_api_support import start

from agent.api.openapi import openapi_document
from agent.api.server import build_router
from agent.gallery import GalleryConfig, GalleryStore
from agent.sync.config import HubConfig
from agent.sync.hub import HubFamily

METHODS = {"get", "post", "put", "patch", "delete"}


def test_every_route_is_documented_and_every_documented_operation_is_a_route(tmp_path):
    run = start(tmp_path / "api")
    store = GalleryStore(GalleryConfig(path=tmp_path / "hub"))
    try:
        routes = build_router(run.ctx, [HubFamily(HubConfig(allow_plaintext=True), store, None)]).routes
        served = {(r.method.lower(), r.template) for r in routes}
        assert all(t for _, t in served), "every route keeps its template"
        doc = openapi_document()["paths"]
        documented = {(m, path) for path, ops in doc.items() for m in ops if m in METHODS}
        assert served - documented == set(), "routes missing from /openapi.json"
        assert documented - served == set(), "documented operations no route serves"
        for path, ops in doc.items():  # every {param} of a path is declared
            names = {p["name"] for p in ops.get("parameters", [])} | {
                p["name"]
                for m in METHODS & set(ops)
                for p in ops[m].get("parameters", [])
                if p["in"] == "path"
            }
            for part in path.split("/"):
                if part.startswith("{"):
                    assert part[1:-1] in names, f"{path}: {part} not declared"
    finally:
        store.close()
        run.close()
