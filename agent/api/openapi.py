"""The OpenAPI 3 document served at GET /openapi.json: every route of the server, its parameters, its
authentication and its error answers. Built from small helpers so each path stays a few lines."""

from __future__ import annotations

from typing import Any

STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
LEVEL = {"type": "string", "enum": ["NONE", "LOW", "NORMAL", "HIGH"], "default": "NONE"}

NATIVE_ERRORS = {
    "400": "invalid request (codes: missing_argument, bad_argument, base64_invalid, image_*)",
    "401": "auth_missing, auth_failed, auth_unknown_key, auth_stale, auth_replayed",
    "403": "auth_disabled, auth_not_allowed",
    "404": "group_not_found, person_not_found, face_not_found, face_token_not_found, not_found",
    "409": "group_exists",
    "411": "length_required",
    "413": "body_too_large, image_file_too_large",
    "422": "no_face, quality_failed",
    "429": "busy (engine queue full; Retry-After)",
    "503": "unavailable (gallery busy or index loading; Retry-After)",
    "504": "engine_timeout",
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _body(schema: dict[str, Any], media: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    return {"required": True, "content": {m: {"schema": schema} for m in media}}


def _native(summary: str, body: dict[str, Any] | None = None, ok: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": ["native"],
        "security": [{"nativeHmac": []}],
        "responses": {
            ok: {"description": "success"},
            **{
                k: {
                    "description": v,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NativeError"}}},
                }
                for k, v in NATIVE_ERRORS.items()
            },
        },
    }
    if body is not None:
        op["requestBody"] = _body(body)
    return op


def _compat(
    tag: str,
    summary: str,
    body: dict[str, Any],
    media: tuple[str, ...],
    errors: dict[str, str],
    security: str | tuple[str, ...],
) -> dict[str, Any]:
    schemes = (security,) if isinstance(security, str) else security
    return {
        "summary": summary,
        "tags": [tag],
        "security": [{s: []} for s in schemes],  # alternatives: any one of them suffices
        "requestBody": _body(body, media),
        "responses": {k: {"description": v} for k, v in errors.items()},
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STR}


def openapi_document() -> dict[str, Any]:
    g, o, f = _path_param("group_id"), _path_param("outer_id"), _path_param("face_id")
    form = ("multipart/form-data", "application/x-www-form-urlencoded")
    search_body = _obj(
        {
            "image_base64": STR,
            "face_token": STR,
            "top_k": {**INT, "default": 1},
            "max_faces": {**INT, "default": 1},
            "min_score": {**INT, "default": 0},
            "quality_control": LEVEL,
            "liveness_control": {
                **LEVEL,
                "description": "single-image liveness (passive cues only); failing faces get candidates [], "
                "face_token null and the verdict under `liveness`",
            },
        }
    )
    paths: dict[str, Any] = {
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3 document"}},
            }
        },
        "/api/v1/health": {
            "get": {
                "summary": "liveness of the API",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/api/v1/groups": {
            "get": _native("list groups"),
            "post": _native("create a group", _obj({"group_id": STR, "group_name": STR, "info": STR}), "201"),
        },
        "/api/v1/groups/{group_id}": {
            "parameters": [g],
            "get": _native("get a group"),
            "patch": _native("rename a group or change its info", _obj({"group_name": STR, "info": STR})),
            "delete": _native("delete a group with its persons and faces"),
        },
        "/api/v1/groups/{group_id}/persons": {"parameters": [g], "get": _native("list persons")},
        "/api/v1/groups/{group_id}/persons/{outer_id}": {
            "parameters": [g, o],
            "get": _native("get a person and their faces"),
            "put": _native("create or update a person", _obj({"user_info": STR})),
            "delete": _native("delete a person and their faces"),
        },
        "/api/v1/groups/{group_id}/persons/{outer_id}/faces": {
            "parameters": [g, o],
            "post": _native(
                "enrol the largest face of an image",
                _obj({"image_base64": STR, "user_info": STR, "quality_control": LEVEL}, ["image_base64"]),
                "201",
            ),
        },
        "/api/v1/faces/{face_id}": {
            "parameters": [f],
            "get": _native("get a face"),
            "delete": _native("delete a face"),
        },
        "/api/v1/groups/{group_id}/search": {
            "parameters": [g],
            "post": _native("1:N / M:N search", search_body),
        },
        "/api/v1/compare": {
            "post": _native(
                "1:1 compare",
                _obj({"image_a_base64": STR, "image_b_base64": STR}, ["image_a_base64", "image_b_base64"]),
            )
        },
        "/jdai/faceCreate": {
            "post": _compat(
                "jd",
                "JD faceCreate: add a face to a group (no groupId/groupName: jd_default_group)",
                _obj(
                    {"groupId": STR, "groupName": STR, "outerId": STR, "imageBase64": STR},
                    ["outerId", "imageBase64"],
                ),
                ("application/json", "application/x-www-form-urlencoded"),
                {
                    "200": "code 10000; result.status 0 or business code 1,2,3,4,5,10,20,21,41",
                    "401": "10001-10004 authentication",
                    "403": "10005/10006",
                    "429": "10020 busy",
                },
                ("jdSign", "jdcloudSigner"),
            )
        },
        "/jdai/faceSearch": {
            "post": _compat(
                "jd",
                "JD faceSearch: 1:N search (groupId/groupName in the query; neither: jd_default_group)",
                _obj({"imageBase64": STR}, ["imageBase64"]),
                ("application/x-www-form-urlencoded", "application/json"),
                {
                    "200": "code 10000; result.result is a JSON string with faceSearchResults",
                    "401": "authentication",
                    "429": "10020 busy",
                },
                ("jdSign", "jdcloudSigner"),
            )
        },
        "/jdai/faceCompareV1": {
            "post": _compat(
                "jd",
                "JD faceCompareV1: 1:1 compare",
                _obj({"imgBase64A": STR, "imgBase64B": STR}, ["imgBase64A", "imgBase64B"]),
                ("application/json",),
                {
                    "200": "result.code 0 or 1,2,3,4,5,10,11,12,31,41",
                    "401": "authentication",
                    "429": "10020 busy",
                },
                ("jdSign", "jdcloudSigner"),
            )
        },
        "/facepp/v3/search": {
            "post": _compat(
                "faceplusplus",
                "Face++ v3 search",
                _obj(
                    {
                        "api_key": STR,
                        "api_secret": STR,
                        "face_token": STR,
                        "image_file": {"type": "string", "format": "binary"},
                        "image_base64": STR,
                        "image_url": STR,
                        "faceset_token": STR,
                        "outer_id": STR,
                        "return_result_count": {**INT, "minimum": 1, "maximum": 5, "default": 1},
                        "face_rectangle": STR,
                    },
                    ["api_key", "api_secret"],
                ),
                form,
                {
                    "200": "results, thresholds, faces",
                    "400": "error_message (see docs/api.md)",
                    "401": "AUTHENTICATION_ERROR",
                    "403": "AUTHORIZATION_ERROR / CONCURRENCY_LIMIT_EXCEEDED",
                    "404": "API_NOT_FOUND",
                    "413": "Request Entity Too Large (plain text)",
                    "500": "INTERNAL_ERROR",
                },
                "faceppKey",
            )
        },
        "/face/multi-search": {
            "post": _compat(
                "jumdata",
                "jumdata M:N multi-search",
                _obj(
                    {
                        "appId": STR,
                        "timestamp": INT,
                        "sign": STR,
                        "file": {"type": "string", "format": "binary"},
                        "base64": STR,
                        "url": STR,
                        "group_id": STR,
                        "maxFaceNum": {**INT, "minimum": 1, "maximum": 10, "default": 1},
                        "matchThreshold": {**INT, "minimum": 0, "maximum": 100, "default": 80},
                        "qualityControl": LEVEL,
                        "livenessControl": LEVEL,
                        "maxUserNum": {**INT, "minimum": 1, "maximum": 20, "default": 1},
                    },
                    ["appId", "timestamp", "sign"],
                ),
                form,
                {"200": "code 200 or 201, 400, 404, 601, 602, 606, 609, 610, 999", "500": "code 500"},
                "jumdataSign",
            )
        },
    }
    sync_ok = {"200": {"description": "a page (docs/sync.md)"}}
    sync_errors = {
        code: {"description": text}
        for code, text in {
            "400": "bad_argument",
            "401": "auth_missing, auth_failed, auth_stale, auth_replayed, auth_unknown_key",
            "403": "device_revoked, group_not_granted",
            "404": "group_not_found",
            "410": "resync_required (take a snapshot)",
        }.items()
    }
    hub_note = "Served only by a hub (config section hub:); devices sign like the native API."

    def _sync(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "summary": summary,
            "description": hub_note,
            "security": [{"nativeHmac": []}],
            "parameters": params,
            "responses": {**sync_ok, **sync_errors},
        }

    page = [
        {"name": n, "in": "query", "schema": sch}
        for n, sch in (
            ("limit", INT),
            ("max_bytes", INT),
            ("thumbnails", {"type": "string", "enum": ["auto", "always", "never"]}),
            ("model", STR),
        )
    ]
    paths["/v1/sync/groups"] = {"get": _sync("the groups granted to this device, with their heads", [])}
    paths["/v1/sync/groups/{group_id}/feed"] = {
        "parameters": [g],
        "get": _sync("operations after a cursor", [{"name": "after", "in": "query", "schema": INT}, *page]),
    }
    paths["/v1/sync/groups/{group_id}/snapshot"] = {
        "parameters": [g],
        "get": _sync(
            "a page of the group's present state", [{"name": "token", "in": "query", "schema": STR}, *page]
        ),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "face-agent HTTP API",
            "version": "1",
            "description": "Native REST API and cloud-compatible endpoints of the edge face agent. "
            "Scores are calibrated 0..100: 70 = FAR 1e-3, 80 = 1e-4, 90 = 1e-5. JD's compare score and "
            "search sim use JD's documented scale: 0.49 = FAR 1e-4, 0.54 = 1e-5, 0.58 = 1e-6.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "NativeError": _obj(
                    {"error": _obj({"code": STR, "message": STR, "param": STR}), "request_id": STR}
                )
            },
            "securitySchemes": {
                "nativeHmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "FA-HMAC-SHA256 key=K,ts=MS,nonce=N,sig=HMAC-SHA256(secret, METHOD\\n"
                    "TARGET\\nts\\nnonce\\nsha256hex(body)); 5 minutes; no replays",
                },
                "jdSign": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "appkey",
                    "description": "with timestamp (ms) and sign = md5hex(secret + timestamp)",
                },
                "jdcloudSigner": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "JD Cloud SDK signature: JDCLOUD2- or JDCLOUD3-HMAC-SHA256 Credential=ak/"
                    "date/region/service/jdcloudN_request, SignedHeaders=..., Signature=...; x-jdcloud-date "
                    "within 5 minutes; no replays",
                },
                "faceppKey": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "api_key",
                    "description": "api_key and api_secret form fields",
                },
                "jumdataSign": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "appId",
                    "description": "with timestamp (ms) and sign = sha256hex(appId + appSecret + timestamp)",
                },
            },
        },
    }
