"""Face++ v3 compatible search: POST /facepp/v3/search (form or multipart), errors as `error_message` with
the documented HTTP statuses; a body over the limit gets the plain-text 413 'Request Entity Too Large'."""

from __future__ import annotations

import time
import uuid
from typing import Any

from agent.api.common import (
    ApiError,
    ImageRules,
    Request,
    Response,
    b64decode,
    check_image,
    classify,
    get_int,
    get_str,
    json_response,
)
from agent.api.routes import Route, route
from agent.api.service import ApiContext
from agent.errors import InputError
from agent.types import Image

FORMATS = ("jpeg", "png")


def _message(code: str, param: str, req_form: dict[str, Any] | None) -> tuple[int, str]:
    """Internal code -> (HTTP status, Face++ error_message)."""
    p = param or "image"
    table: dict[str, tuple[int, str]] = {
        "face_token_not_found": (400, f"INVALID_FACE_TOKEN: {(req_form or {}).get('face_token', '')}"),
        "empty_group": (400, "EMPTY_FACESET"),
        "image_unsupported_format": (400, f"IMAGE_ERROR_UNSUPPORTED_FORMAT: {p}"),
        "base64_invalid": (400, f"IMAGE_ERROR_UNSUPPORTED_FORMAT: {p}"),
        "image_too_small": (400, f"INVALID_IMAGE_SIZE: {p}"),
        "image_too_large": (400, f"INVALID_IMAGE_SIZE: {p}"),
        "url_unsupported": (400, f"INVALID_IMAGE_URL: {p}"),
        "image_file_too_large": (400, f"IMAGE_FILE_TOO_LARGE: {p}"),
        "auth_failed": (401, "AUTHENTICATION_ERROR"),
        "auth_unknown_key": (401, "AUTHENTICATION_ERROR"),
        "auth_disabled": (403, "AUTHORIZATION_ERROR:Denied by Admin"),
        "auth_not_allowed": (403, "AUTHORIZATION_ERROR:Denied by Admin"),
        "busy": (403, "CONCURRENCY_LIMIT_EXCEEDED"),
        "unavailable": (403, "CONCURRENCY_LIMIT_EXCEEDED"),
        "engine_timeout": (403, "CONCURRENCY_LIMIT_EXCEEDED"),
        "missing_argument": (400, f"MISSING_ARGUMENTS: {param}"),
        "auth_missing": (400, f"MISSING_ARGUMENTS: {param or 'api_key'}"),
        "coexistence": (400, "COEXISTENCE_ARGUMENTS"),
        "not_found": (404, "API_NOT_FOUND"),
        "method_not_allowed": (404, "API_NOT_FOUND"),
    }
    if code == "group_not_found":
        return 400, "INVALID_OUTER_ID" if param == "outer_id" else "INVALID_FACESET_TOKEN"
    if code in table:
        return table[code]
    if code in ("bad_argument", "bad_body", "body_not_json", "length_required", "auth_bad_timestamp"):
        return 400, f"BAD_ARGUMENTS: {param or 'body'}"
    return 500, "INTERNAL_ERROR"


_FACEPP_FARS = ("1e-3", "1e-4", "1e-5")  # the keys of Face++ search v3 `thresholds`


class FacePlusPlusApi:
    name = "faceplusplus"
    prefix = "/facepp/"

    max_body_bytes = 2 * 1024 * 1024  # "客户发送的请求大小超过了2MB限制": 413, plain text

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.rules = ImageRules(FORMATS, cfg.compat_image_bytes, cfg.compat_min_side, cfg.compat_max_side)

    def routes(self) -> list[Route]:
        return [route("POST", "/facepp/v3/search", self.search, self.name)]

    def error(self, exc: Exception, req: Request) -> Response:
        code, _, param = classify(exc)
        if code == "body_too_large":  # documented as plain text, not JSON
            return Response(413, b"Request Entity Too Large", "text/plain; charset=utf-8")
        status, message = _message(code, param, req._form)
        return json_response(
            status, {"time_used": req.elapsed_ms(), "error_message": message, "request_id": _request_id()}
        )

    def search(self, req: Request, p: dict[str, str]) -> Response:
        form = req.form()
        self.ctx.auth.key_secret(req, _text(form, "api_key"), _text(form, "api_secret"))
        group_id = self._group(form)
        count = get_int(form, "return_result_count", 1, 1, 5)
        rect = _rectangle(form.get("face_rectangle"))
        token = get_str(form, "face_token", max_len=64)
        out: dict[str, Any] = {"request_id": _request_id()}
        if token is not None:  # face_token wins over any image
            vector = self.ctx.embedding_for_token(token)
            if vector is None:
                raise ApiError("face_token_not_found", "unknown face_token", "face_token")
        else:
            image = self._image(form)
            emb = self._query_face(image, rect, out)
            if emb is None:  # no face: no results, no thresholds (as documented)
                out["time_used"] = req.elapsed_ms()
                return json_response(200, out)
            vector = emb
        found = self.ctx.matcher.search(group_id, vector, top_k=count)
        # Face++ documents exactly three keys (1e-3, 1e-4, 1e-5); the device also calibrates 1e-6, which
        # the native API returns but a strict Face++ client must not see.
        out["thresholds"] = {k: v for k, v in self.ctx.scores.thresholds().items() if k in _FACEPP_FARS}
        out["results"] = [
            {"face_token": c.face_id, "confidence": round(c.score, 3), "user_id": c.outer_id} for c in found
        ]
        out["time_used"] = req.elapsed_ms()
        return json_response(200, out)

    def _group(self, form: dict[str, Any]) -> str:
        token, outer = get_str(form, "faceset_token"), get_str(form, "outer_id")
        if token and outer:
            raise ApiError("coexistence", "give faceset_token or outer_id, not both")
        if not token and not outer:
            raise ApiError("missing_argument", "faceset_token or outer_id is required", "faceset_token")
        try:
            group = (
                self.ctx.gallery.get_group(group_id=token)
                if token
                else self.ctx.gallery.get_group(group_name=outer)
            )
        except ApiError:
            raise
        except InputError as exc:  # group_not_found or an invalid id: both mean "no such FaceSet"
            raise ApiError("group_not_found", str(exc), "faceset_token" if token else "outer_id") from exc
        if not self.ctx.has_faces(group.group_id):
            raise ApiError("empty_group", "the FaceSet has no faces")
        return group.group_id

    def _image(self, form: dict[str, Any]) -> Image:
        """image_file first, then image_base64, then image_url (refused: the device works offline)."""
        limits = self.ctx.engine.config.images
        if form.get("image_file") not in (None, ""):
            data = form["image_file"]
            if not isinstance(data, bytes):
                raise ApiError("bad_argument", "image_file must be a multipart file", "image_file")
            return check_image(data, self.rules, "image_file", limits, self.ctx.decodes)
        if form.get("image_base64") not in (None, ""):
            raw = b64decode(form["image_base64"], "image_base64", self.rules.max_bytes * 4 // 3 + 4)
            return check_image(raw, self.rules, "image_base64", limits, self.ctx.decodes)
        if form.get("image_url") not in (None, ""):
            raise ApiError("url_unsupported", "image URLs are not fetched by the device", "image_url")
        raise ApiError(
            "missing_argument", "face_token, image_file, image_base64 or image_url is required", "image_file"
        )

    def _query_face(self, image: Image, rect: tuple[int, int, int, int] | None, out: dict[str, Any]):
        out["image_id"] = uuid.uuid4().hex
        if rect is not None:
            emb = self.ctx.analyze_in_box(image, rect)
            if emb is None:
                out["faces"] = []
                return None
            top, left, width, height = rect
            out["faces"] = [
                {
                    "face_token": self.ctx.tokens.put(emb.vector),
                    "face_rectangle": {"top": top, "left": left, "width": width, "height": height},
                }
            ]
            return emb.vector
        embs = self.ctx.analyze(image, self.ctx.gallery.config.max_query_faces)
        out["faces"] = [
            {"face_token": self.ctx.tokens.put(e.vector), "face_rectangle": _rect(e)} for e in embs
        ]
        return embs[0].vector if embs else None


def _rect(emb) -> dict[str, int]:
    x, y, w, h = emb.face.box.as_xywh()
    return {"top": y, "left": x, "width": w, "height": h}


def _text(form: dict[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value else None


def _rectangle(value: object) -> tuple[int, int, int, int] | None:
    """'top,left,width,height' of positive integers (empty or absent: not used)."""
    if value is None or value == "":
        return None
    try:
        parts = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        parts = ()
    if (
        len(parts) != 4
        or parts[0] < 0
        or parts[1] < 0
        or parts[2] <= 0
        or parts[3] <= 0
        or max(parts) > 100_000
    ):
        raise ApiError(
            "bad_argument", "face_rectangle must be four integers top,left,width,height", "face_rectangle"
        )
    return parts  # type: ignore[return-value]


def _request_id() -> str:
    return f"{int(time.time())},{uuid.uuid4()}"
