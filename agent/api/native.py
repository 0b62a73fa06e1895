"""The native REST API (/api/v1): groups, persons, faces, search and compare, with typed JSON errors
`{"error": {"code", "message", "param"}, "request_id"}` and conventional HTTP statuses."""

from __future__ import annotations

from typing import Any

from agent.api.common import (
    ApiError,
    ImageRules,
    Request,
    Response,
    _parse_json_object,
    b64decode,
    check_header,
    check_image,
    classify,
    get_choice,
    get_int,
    get_str,
    json_response,
)
from agent.api.routes import Route, route
from agent.api.service import LEVELS, ApiContext
from agent.errors import InputError
from agent.gallery import Candidate
from agent.gallery.store import FaceRecord, GroupRecord, PersonRecord
from agent.gates.liveness import LivenessReport
from agent.types import Face, Image

P = "/api/v1"

STATUS = {
    "missing_argument": 400,
    "bad_argument": 400,
    "coexistence": 400,
    "bad_body": 400,
    "body_not_json": 400,
    "base64_invalid": 400,
    "image_unsupported_format": 400,
    "image_too_small": 400,
    "image_too_large": 400,
    "url_unsupported": 400,
    "auth_bad_timestamp": 400,
    "auth_missing": 401,
    "auth_failed": 401,
    "auth_unknown_key": 401,
    "auth_stale": 401,
    "auth_replayed": 401,
    "auth_disabled": 403,
    "auth_not_allowed": 403,
    "group_not_found": 404,
    "person_not_found": 404,
    "face_not_found": 404,
    "not_found": 404,
    "face_token_not_found": 404,
    "method_not_allowed": 405,
    "group_exists": 409,
    "group_read_only": 409,  # a group mirrored from a hub (docs/sync.md): change it on the hub
    "length_required": 411,
    "body_too_large": 413,
    "image_file_too_large": 413,
    "no_face": 422,
    "quality_failed": 422,
    "busy": 429,
    "unavailable": 503,
    "engine_timeout": 504,
    "internal": 500,
}

# Gallery codes the native API passes on as they are (the compatible families map them to their own).
_NATIVE_CODES = {"group_read_only", "group_conflict"}


def box_json(face: Face) -> dict[str, float]:
    b = face.box
    return {
        "left": round(b.x1, 2),
        "top": round(b.y1, 2),
        "width": round(b.width, 2),
        "height": round(b.height, 2),
    }


def _group(g: GroupRecord) -> dict[str, Any]:
    return {"group_id": g.group_id, "group_name": g.group_name, "info": g.info, "created_at": g.created_at}


def _person(p: PersonRecord) -> dict[str, Any]:
    return {
        "outer_id": p.outer_id,
        "user_info": p.user_info,
        "group_id": p.group_id,
        "created_at": p.created_at,
    }


def _face(f: FaceRecord) -> dict[str, Any]:
    return {
        "face_id": f.face_id,
        "outer_id": f.outer_id,
        "group_id": f.group_id,
        "model_id": f.model_id,
        "quality": f.quality,
        "created_at": f.created_at,
    }


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "outer_id": c.outer_id,
        "user_info": c.user_info,
        "face_id": c.face_id,
        "group_id": c.group_id,
        "score": round(c.score, 3),
        "cosine": round(c.cosine, 5),
    }


def _liveness(report: LivenessReport, level: str) -> dict[str, Any]:
    """A single-image liveness verdict: passive cues only (docs/liveness.md), so `track_score` is absent."""
    return {
        "level": level,
        "passed": report.passed,
        "score": round(report.score, 4),
        "reasons": list(report.reasons),
        "measures": {k: round(v, 4) for k, v in report.measures.items()},
    }


class NativeApi:
    name = "native"
    prefix = P

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        limits = ctx.engine.config.images
        self.rules = ImageRules(
            ("jpeg", "png", "bmp", "webp"), ctx.config.native_image_bytes, limits.min_side, 20_000
        )

    def routes(self) -> list[Route]:
        from agent.api.openapi import openapi_document

        doc = openapi_document()
        r = [
            ("GET", "/openapi.json", lambda req, p: json_response(200, doc), False),
            ("GET", f"{P}/health", self.health, False),
            ("GET", f"{P}/groups", self.list_groups, True),
            ("POST", f"{P}/groups", self.create_group, True),
            ("GET", f"{P}/groups/{{group_id}}", self.get_group, True),
            ("PATCH", f"{P}/groups/{{group_id}}", self.update_group, True),
            ("DELETE", f"{P}/groups/{{group_id}}", self.delete_group, True),
            ("GET", f"{P}/groups/{{group_id}}/persons", self.list_persons, True),
            ("PUT", f"{P}/groups/{{group_id}}/persons/{{outer_id}}", self.put_person, True),
            ("GET", f"{P}/groups/{{group_id}}/persons/{{outer_id}}", self.get_person, True),
            ("DELETE", f"{P}/groups/{{group_id}}/persons/{{outer_id}}", self.delete_person, True),
            ("POST", f"{P}/groups/{{group_id}}/persons/{{outer_id}}/faces", self.add_face, True),
            ("GET", f"{P}/faces/{{face_id}}", self.get_face, True),
            ("DELETE", f"{P}/faces/{{face_id}}", self.delete_face, True),
            ("POST", f"{P}/groups/{{group_id}}/search", self.search, True),
            ("POST", f"{P}/compare", self.compare, True),
        ]
        return [route(m, t, self._authed(h) if auth else h, self.name) for m, t, h, auth in r]

    def _authed(self, handler):
        def wrapped(req: Request, params: dict[str, str]) -> Response:
            self.ctx.auth.native(req)
            return handler(req, params)

        return wrapped

    def error(self, exc: Exception, req: Request) -> Response:
        code, message, param = classify(exc)
        if isinstance(exc, InputError) and exc.code in _NATIVE_CODES:  # the native API names them itself
            code, param = exc.code, ""
        status = STATUS.get(code, 400 if code.startswith("invalid") else 500)
        err: dict[str, Any] = {"code": code, "message": message}
        if param:
            err["param"] = param
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return json_response(status, {"error": err, "request_id": req.request_id}, headers)

    # -- helpers -----------------------------------------------------------------------------------------

    @staticmethod
    def _json(req: Request, allowed: set[str]) -> dict[str, Any]:
        """The body as a JSON object with only known fields: a typo is an error, not a silent default."""
        if req.content_type not in ("application/json", ""):
            raise ApiError("bad_body", "the native API takes application/json bodies")
        body = _parse_json_object(req.body) if req.body else {}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError("bad_argument", f"unknown field(s) {', '.join(unknown)}", unknown[0])
        return body

    def _raw(self, form: dict[str, Any], name: str) -> bytes:
        text = get_str(form, name, required=True, max_len=1 << 30)
        return b64decode(text, name, self.rules.max_bytes * 4 // 3 + 1024)

    def _decode(self, raw: bytes, name: str) -> Image:
        return check_image(raw, self.rules, name, self.ctx.engine.config.images, self.ctx.decodes)

    def _image(self, form: dict[str, Any], name: str) -> Image:
        return self._decode(self._raw(form, name), name)

    # -- handlers ----------------------------------------------------------------------------------------

    def health(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(
            200,
            {
                "status": "ok",
                "model_id": self.ctx.model_id,
                "engine_rejected": self.ctx.gate.rejected,
            },
        )

    def list_groups(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {"groups": [_group(g) for g in self.ctx.gallery.list_groups()]})

    def create_group(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(req, {"group_id", "group_name", "info"})
        if form.get("group_id") in (None, "") and form.get("group_name") in (None, ""):
            raise ApiError("missing_argument", "group_id or group_name is required", "group_id")
        group = self.ctx.gallery.create_group(
            get_str(form, "group_id"), get_str(form, "group_name"), get_str(form, "info", max_len=65536) or ""
        )
        return json_response(201, _group(group))

    def get_group(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, _group(self.ctx.gallery.get_group(p["group_id"])))

    def update_group(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(req, {"group_name", "info"})
        if form.get("group_name") is None and form.get("info") is None:
            raise ApiError("missing_argument", "give group_name and/or info", "group_name")
        group = self.ctx.gallery.update_group(
            p["group_id"], get_str(form, "group_name"), get_str(form, "info", max_len=65536)
        )
        return json_response(200, _group(group))

    def delete_group(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {"deleted_faces": self.ctx.gallery.delete_group(p["group_id"])})

    def list_persons(self, req: Request, p: dict[str, str]) -> Response:
        persons = self.ctx.gallery.list_persons(self.ctx.gallery.get_group(p["group_id"]).group_id)
        return json_response(200, {"persons": [_person(x) for x in persons]})

    def put_person(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(req, {"user_info"})
        info = form.get("user_info")
        if not isinstance(info, str):
            raise ApiError(
                "missing_argument" if info is None else "bad_argument",
                "user_info (string) is required",
                "user_info",
            )
        return json_response(200, _person(self.ctx.gallery.upsert_person(p["group_id"], p["outer_id"], info)))

    def get_person(self, req: Request, p: dict[str, str]) -> Response:
        person = self.ctx.gallery.get_person(p["group_id"], p["outer_id"])
        faces = self.ctx.gallery.faces_of_person(p["group_id"], p["outer_id"])
        return json_response(200, {**_person(person), "faces": [_face(f) for f in faces]})

    def delete_person(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(
            200, {"deleted_faces": self.ctx.gallery.delete_person(p["group_id"], p["outer_id"])}
        )

    def add_face(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(req, {"image_base64", "user_info", "quality_control"})
        level = get_choice(form, "quality_control", "NONE", LEVELS)
        info = get_str(form, "user_info", max_len=65536)
        image = self._image(form, "image_base64")
        self.ctx.gallery.get_group(p["group_id"])  # unknown group -> 404 before the engine is used
        emb, record = self.ctx.enrol(p["group_id"], p["outer_id"], image, info, level)
        return json_response(
            201, {**_face(record), "box": box_json(emb.face), "detection_score": round(emb.face.score, 4)}
        )

    def get_face(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, _face(self.ctx.gallery.get_face(p["face_id"])))

    def delete_face(self, req: Request, p: dict[str, str]) -> Response:
        self.ctx.gallery.delete_face(p["face_id"])
        return json_response(200, {"deleted_faces": 1})

    def search(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(
            req,
            {
                "image_base64",
                "face_token",
                "top_k",
                "max_faces",
                "min_score",
                "quality_control",
                "liveness_control",
            },
        )
        top_k = get_int(form, "top_k", 1, 1, self.ctx.gallery.config.max_top_k)
        max_faces = get_int(form, "max_faces", 1, 1, self.ctx.gallery.config.max_query_faces)
        min_score = get_int(form, "min_score", 0, 0, 100)
        level = get_choice(form, "quality_control", "NONE", LEVELS)
        live_level = get_choice(form, "liveness_control", "NONE", LEVELS)
        token = get_str(form, "face_token", max_len=64)
        group_id = self.ctx.gallery.get_group(p["group_id"]).group_id
        if token is not None:
            if form.get("image_base64"):
                raise ApiError("coexistence", "give face_token or image_base64, not both", "face_token")
            if live_level != "NONE":  # a token carries no pixels: nothing to check liveness on
                raise ApiError("coexistence", "liveness_control needs image_base64", "liveness_control")
            vec = self.ctx.embedding_for_token(token)
            if vec is None:
                raise ApiError("face_token_not_found", f"face_token {token} is unknown", "face_token")
            found = self.ctx.matcher.search_many(group_id, [vec], top_k, float(min_score))[0]
            return json_response(
                200,
                {
                    "faces": [{"face_token": token, "candidates": [_candidate(c) for c in found]}],
                    "thresholds": self.ctx.scores.thresholds(),
                },
            )
        image = self._image(form, "image_base64")
        embs = self.ctx.analyze(image, max_faces)
        if level != "NONE":
            embs = [e for e in embs if not self.ctx.quality.reasons(self.ctx.measure(image, e.face), level)]
        live = (
            {id(e): self.ctx.liveness(image, e.face, live_level) for e in embs}
            if live_level != "NONE"
            else {}
        )
        # A face failing liveness is answered (with why) but never searched and gets no token: fail closed.
        searched = [e for e in embs if id(e) not in live or live[id(e)].passed]
        results = (
            self.ctx.matcher.search_many(group_id, [e.vector for e in searched], top_k, float(min_score))
            if searched
            else []
        )
        found_by = {id(e): found for e, found in zip(searched, results, strict=True)}
        faces = []
        for e in embs:
            face: dict[str, Any] = {
                "face_token": self.ctx.tokens.put(e.vector) if id(e) in found_by else None,
                "box": box_json(e.face),
                "detection_score": round(e.face.score, 4),
                "candidates": [_candidate(c) for c in found_by.get(id(e), [])],
            }
            if id(e) in live:
                face["liveness"] = _liveness(live[id(e)], live_level)
            faces.append(face)
        return json_response(200, {"faces": faces, "thresholds": self.ctx.scores.thresholds()})

    def compare(self, req: Request, p: dict[str, str]) -> Response:
        form = self._json(req, {"image_a_base64", "image_b_base64"})
        raw_a, raw_b = self._raw(form, "image_a_base64"), self._raw(form, "image_b_base64")
        check_header(raw_a, self.rules, "image_a_base64")  # both images' rules first, in order
        check_header(raw_b, self.rules, "image_b_base64")
        # One decoded image at a time (the pixel budget): A is analysed and freed before B is decoded.
        fa = self.ctx.analyze(self._decode(raw_a, "image_a_base64"), 1)
        fb = self.ctx.analyze(self._decode(raw_b, "image_b_base64"), 1)
        if not fa or not fb:
            raise ApiError(
                "no_face",
                "no face detected in " + ("image_a_base64" if not fa else "image_b_base64"),
                "image_a_base64" if not fa else "image_b_base64",
            )
        cosine, score = self.ctx.matcher.compare(fa[0].vector, fb[0].vector)
        return json_response(
            200,
            {
                "score": round(score, 3),
                "cosine": round(cosine, 5),
                "thresholds": self.ctx.scores.thresholds(),
                "face_a": {"box": box_json(fa[0].face)},
                "face_b": {"box": box_json(fb[0].face)},
            },
        )
