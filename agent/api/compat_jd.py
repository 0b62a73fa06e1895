"""JD AI (neuhub) compatible endpoints: /jdai/faceCreate, /jdai/faceSearch, /jdai/faceCompareV1.

Envelope `{code, charge, remain, msg, result}`; `code` is the system-level code ("10000" = the call was
processed), business outcome inside `result` (`status` for create/search, `code` for compare). In
faceCreate / faceSearch the inner `result` is itself a JSON string, as in JD's examples.
JD's system-level error table is not part of the reference documents; the local values are listed in
docs/api.md. Business codes follow the faceCompareV1 table for every endpoint, plus 20 / 21 (local).

Similarities (compare `score`, search `sim`) are on JD's documented scale, not the device's 0..100 score:
`JdScale` maps the calibrated score so that 0.49 / 0.54 / 0.58 fall exactly on the model's thresholds at
FAR 1e-4 / 1e-5 / 1e-6, as the faceCompareV1 document says, and shown values are rounded down, so a shown
value at or above a threshold really is. Without groupId and groupName, faceCreate / faceSearch use
`jd_default_group`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from agent.api import jdcloud_sig
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
    get_str,
    json_response,
)
from agent.api.routes import Route, route
from agent.api.service import ApiContext
from agent.errors import InputError
from agent.gallery import FAR_SCORES
from agent.types import Image

# business code -> msg (faceCompareV1 table; 20 and 21 are local extensions for create/search)
BUSINESS = {
    "missing_argument": (1, "NoRequiredFields"),
    "coexistence": (1, "NoRequiredFields"),
    "image_too_small": (2, "ImageIsTooSmall"),
    "image_too_large": (3, "ImageIsTooLarge"),
    "base64_invalid": (4, "Base64IsInvalid"),
    "image_unsupported_format": (4, "Base64IsInvalid"),
    "image_file_too_large": (5, "Base64IsTooLarge"),
    "no_face": (10, "NoFaceDetected"),
    "quality_failed": (11, "InvalidFaceQuality"),
    "posture_invalid": (12, "InvalidFacePosture"),
    "body_not_json": (31, "RequestBodyIsNotJson"),
    "engine_timeout": (41, "TimeoutException"),
    "group_not_found": (20, "GroupNotFound"),
    "bad_argument": (21, "InvalidArgument"),
    "bad_body": (21, "InvalidArgument"),
    "url_unsupported": (21, "InvalidArgument"),
}
# system-level failures: internal code -> (HTTP status, code, msg)
SYSTEM = {
    "auth_failed": (401, "10001", "错误的请求appkey或签名"),
    "auth_unknown_key": (401, "10001", "错误的请求appkey或签名"),
    "auth_missing": (401, "10002", "appkey、timestamp、sign 参数不能为空"),
    "auth_bad_timestamp": (401, "10003", "timestamp 无效或已超过5分钟有效期"),
    "auth_stale": (401, "10003", "timestamp 无效或已超过5分钟有效期"),
    "auth_replayed": (401, "10004", "签名已被使用(重放)"),
    "auth_disabled": (403, "10005", "appkey 已停用"),
    "auth_not_allowed": (403, "10006", "appkey 无权调用此接口"),
    "busy": (429, "10020", "系统繁忙,请稍候再试"),
    "unavailable": (503, "10020", "系统繁忙,请稍候再试"),
    "not_found": (404, "10404", "接口不存在"),
    "method_not_allowed": (405, "10405", "请求方式不支持"),
    "length_required": (411, "10411", "需要 Content-Length"),
    "body_too_large": (413, "10413", "请求体过大"),
    "internal": (500, "10500", "服务器内部错误"),
}
OK_CODE, OK_MSG = "10000", "查询成功"
FORMATS = ("jpeg", "png", "bmp")  # bmp, jpg, jpeg, png, jfif (JFIF is JPEG)


def envelope(result: object, code: str = OK_CODE, msg: str = OK_MSG) -> dict[str, Any]:
    # Nothing is charged on the device; `remain` -1 = unlimited.
    return {"code": code, "charge": False, "remain": -1, "msg": msg, "result": result}


def _num(x: float) -> str:
    return f"{x:.2f}"


# faceCompareV1: "万分之一误识率下阈值: 0.49, 十万分之一误识率下阈值: 0.54, 百万分之一误识率下阈值：0.58"
JD_SCORE_AT_FAR = {"1e-4": 0.49, "1e-5": 0.54, "1e-6": 0.58}


class JdScale:
    """The calibrated score (0..100, FAR_SCORES) on JD's similarity scale (0..1), piecewise linear through
    (0, 0), (the score at each FAR JD names, JD's value there) and (100, 1): strictly increasing, so the
    ranking is kept. A FAR the model's manifest does not calibrate (1e-6 for some models) gets no point,
    so no value claims a rate nobody measured."""

    def __init__(self, calibrated_fars: Iterable[str]) -> None:
        calibrated = set(calibrated_fars)
        fars = [far for far in JD_SCORE_AT_FAR if far in calibrated]
        self._score = np.array([0.0] + [FAR_SCORES[far] for far in fars] + [100.0])
        self._jd = np.array([0.0] + [JD_SCORE_AT_FAR[far] for far in fars] + [1.0])

    def __call__(self, score: float) -> float:
        return float(np.interp(score, self._score, self._jd))


def floor_to(x: float, decimals: int) -> float:
    """Round down, so that a shown 0.49 is never a 0.4899 rounded up past JD's threshold. The tiny nudge
    keeps a value that is exactly on a threshold there despite binary fractions (0.58 * 100 = 57.999...)."""
    scale = 10**decimals
    return math.floor(x * scale + 1e-9) / scale


class JdApi:
    name = "jd"
    prefix = "/jdai/"

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.scale = JdScale(ctx.scores.fars)
        cfg = ctx.config
        self.rules = ImageRules(FORMATS, cfg.compat_image_bytes, cfg.compat_min_side, cfg.compat_max_side)
        self.compare_rules = ImageRules(
            FORMATS, cfg.compat_image_bytes, cfg.compat_min_side, cfg.compare_max_side
        )

    def routes(self) -> list[Route]:
        return [
            route("POST", "/jdai/faceCreate", self.face_create, self.name),
            route("POST", "/jdai/faceSearch", self.face_search, self.name),
            route("POST", "/jdai/faceCompareV1", self.face_compare, self.name),
        ]

    # -- errors ------------------------------------------------------------------------------------------

    def error(self, exc: Exception, req: Request) -> Response:
        code, message, _ = classify(exc)
        if code in BUSINESS:
            status, name = BUSINESS[code]
            return json_response(200, envelope(self._business_error(req, status, name)))
        http, sys_code, msg = SYSTEM.get(code, SYSTEM["internal"])
        if code.startswith("auth_"):
            msg = f"{msg}: {message}"  # say which check failed: the code alone covers several causes
        headers = {"Retry-After": "1"} if http in (429, 503) else {}
        return json_response(http, envelope(None, sys_code, msg), headers)

    def _business_error(self, req: Request, status: int, name: str) -> dict[str, Any]:
        if req.path.endswith("faceCompareV1"):
            return {
                "code": status,
                "msg": name,
                "processTimeInMs": req.elapsed_ms(),
                "timestamp": int(time.time() * 1000),
            }
        return {"requestid": req.request_id, "message": name, "status": status, "result": ""}

    def _ok(self, req: Request, inner: dict[str, Any]) -> Response:
        result = {
            "requestid": req.request_id,
            "message": "success",
            "status": 0,
            "result": json.dumps(inner, ensure_ascii=False, separators=(",", ":")),
        }
        return json_response(200, envelope(result))

    # -- helpers -----------------------------------------------------------------------------------------

    def _auth(self, req: Request, form: dict[str, Any]) -> None:
        header = req.headers.get("authorization")
        if header is not None:
            # A JD Cloud SDK signature replaces appkey / timestamp / sign; any other scheme is refused.
            if not jdcloud_sig.is_jdcloud(header):
                raise ApiError("auth_failed", "Authorization must be JDCLOUD2- or JDCLOUD3-HMAC-SHA256")
            self.ctx.auth.jdcloud(req)
            return
        q = {k: v[0] for k, v in req.query.items()}
        pick = lambda n: q.get(n) or (form.get(n) if isinstance(form.get(n), str) else None)  # noqa: E731
        self.ctx.auth.signed(req, "jd", pick("appkey"), pick("timestamp"), pick("sign"))

    def _form(self, req: Request, parse=Request.form) -> dict[str, Any]:
        """Parse the body and authenticate; an unparsable body is reported only to an authenticated caller
        (credentials then come from the query string)."""
        try:
            form = parse(req)
        except ApiError:
            self._auth(req, {})
            raise
        self._auth(req, form)
        return form

    def _raw(self, form: dict[str, Any], name: str, rules: ImageRules) -> bytes:
        text = get_str(form, name, required=True, max_len=1 << 30)
        # "Base64 大小小于2MB" for compare is about the text; create/search limit the file (decoded) size.
        max_chars = rules.max_bytes if rules is self.compare_rules else rules.max_bytes * 4 // 3 + 4
        return b64decode(text, name, max_chars)

    def _decode(self, raw: bytes, name: str, rules: ImageRules) -> Image:
        return check_image(raw, rules, name, self.ctx.engine.config.images, self.ctx.decodes)

    def _image(self, form: dict[str, Any], name: str, rules: ImageRules) -> Image:
        return self._decode(self._raw(form, name, rules), name, rules)

    def _group_id(self, form: dict[str, Any], create_default: bool = False) -> str:
        """groupId wins over groupName. Both are optional in JD's documents: without either the configured
        default group is used; for faceCreate it need not exist yet (`_enrol` creates it)."""
        gid, name = get_str(form, "groupId"), get_str(form, "groupName")
        if gid:
            return self.ctx.gallery.get_group(group_id=gid).group_id
        if name:
            return self.ctx.gallery.get_group(group_name=name).group_id
        default = self.ctx.config.jd_default_group
        if default is None:
            raise ApiError("missing_argument", "groupId or groupName is required", "groupId")
        try:
            return self.ctx.gallery.get_group(group_id=default).group_id
        except InputError as exc:
            if exc.code != "group_not_found" or not create_default:
                raise
        return default

    def _enrol(self, group_id: str, outer_id: str, image: Image):
        try:
            return self.ctx.enrol(group_id, outer_id, image)
        except InputError as exc:
            if exc.code != "group_not_found" or group_id != self.ctx.config.jd_default_group:
                raise
        # The default group is created only once a face is good enough to enrol, so a refused request
        # stores nothing. The retry repeats the engine work, once per gallery.
        try:
            self.ctx.gallery.create_group(group_id=group_id)
        except InputError as exc:  # a concurrent faceCreate created it in between
            if exc.code != "group_exists":
                raise
        return self.ctx.enrol(group_id, outer_id, image)

    # -- endpoints ---------------------------------------------------------------------------------------

    def face_create(self, req: Request, p: dict[str, str]) -> Response:
        form = self._form(req)
        outer_id = get_str(form, "outerId", required=True)
        group_id = self._group_id(form, create_default=True)
        image = self._image(form, "imageBase64", self.rules)
        assert outer_id is not None
        _, record = self._enrol(group_id, outer_id, image)
        return self._ok(req, {"faceId": record.face_id})

    def face_search(self, req: Request, p: dict[str, str]) -> Response:
        form = self._form(req)
        group_id = self._group_id(form)
        image = self._image(form, "imageBase64", self.rules)
        embs = self.ctx.analyze(image, self.ctx.gallery.config.max_query_faces)
        if not embs:
            raise ApiError("no_face", "no face detected")
        results = []
        for index, emb in enumerate(embs):
            found = self.ctx.matcher.search(group_id, emb.vector, top_k=1)
            if not found:
                continue
            best, b = found[0], emb.face.box
            results.append(
                {
                    "conf": round(emb.face.score, 7),
                    "faceID": {
                        "faceId": best.face_id,
                        "index": index,
                        "outerId": best.outer_id,
                        "sim": floor_to(self.scale(best.score), 4),
                    },
                    "height": round(b.height, 4),
                    "left": round(b.x1, 4),
                    "top": round(b.y1, 4),
                    "width": round(b.width, 4),
                }
            )
        return self._ok(req, {"faceSearchResults": results})

    def face_compare(self, req: Request, p: dict[str, str]) -> Response:
        form = self._form(req, _compare_form)
        rules = self.compare_rules
        raw_a, raw_b = self._raw(form, "imgBase64A", rules), self._raw(form, "imgBase64B", rules)
        check_header(raw_a, rules, "imgBase64A")  # both images' rules first, in order, as before
        check_header(raw_b, rules, "imgBase64B")
        # One decoded image at a time (the pixel budget): A is analysed and freed before B is decoded.
        items_a, emb_a = self._face_items(self._decode(raw_a, "imgBase64A", rules))
        items_b, emb_b = self._face_items(self._decode(raw_b, "imgBase64B", rules))
        _, score = self.ctx.matcher.compare(emb_a.vector, emb_b.vector)
        return json_response(
            200,
            envelope(
                {
                    "code": 0,
                    "msg": "Accept",
                    "processTimeInMs": req.elapsed_ms(),
                    "timestamp": int(time.time() * 1000),
                    "score": _num(floor_to(self.scale(score), 2)),
                    "faceItemsA": items_a,
                    "faceItemsB": items_b,
                }
            ),
        )

    def _face_items(self, image: Image):
        embs = self.ctx.analyze(image, self.ctx.gallery.config.max_query_faces)
        if not embs:
            raise ApiError("no_face", "no face detected")
        items = []
        level = self.ctx.config.compare_quality
        for i, emb in enumerate(embs):
            m = self.ctx.measure(image, emb.face)
            valid = self.ctx.quality.valid_posture(m, "NORMAL" if level == "NONE" else level)
            if i == 0 and level != "NONE":  # the compared (largest) face must pass the configured level
                if not valid:
                    raise ApiError("posture_invalid", "face turned too far")
                if self.ctx.quality.reasons(m, level):
                    raise ApiError("quality_failed", "face quality below the threshold")
            b = emb.face.box
            items.append(
                {
                    "blurScore": _num(self.ctx.quality.jd_blur_score(m)),
                    "boundingBox": {
                        "height": _num(b.height),
                        "left": _num(b.x1),
                        "top": _num(b.y1),
                        "width": _num(b.width),
                    },
                    "isValidPosture": valid,
                    "posture": {k: _num(float(v)) for k, v in self.ctx.quality.posture(m).items()},
                }
            )
        return items, embs[0]


def _compare_form(req: Request) -> dict[str, Any]:
    """faceCompareV1 requires a JSON body (business code 31 otherwise); auth may come in the query."""
    if req._form is None:
        body = _parse_json_object(req.body) if req.body else {}
        req._form = {**{k: v[0] for k, v in req.query.items()}, **body}
    return req._form
