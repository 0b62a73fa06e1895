"""jumdata compatible M:N search: POST /face/multi-search (form-data or urlencoded).

Answers `{msg, success, code, taskNo, charge, data}`; errors `{msg, code}` with the documented codes (not HTTP
statuses: HTTP is 200 except for internal errors). Local extension: `group_id` (optional) names the group
to search; without it the configured default group, else every group, is searched.
`livenessControl` LOW/NORMAL/HIGH leaves out faces that fail the single-image liveness check, as the document
says ("faces whose liveness does not meet the requirement are not returned"). One image can only show the
medium (screen moire, glare, a card's border): see docs/liveness.md for what such a pass is worth.
"""

from __future__ import annotations

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
    get_choice,
    get_int,
    get_str,
    json_response,
)
from agent.api.routes import Route, route
from agent.api.service import LEVELS, ApiContext, roll_degrees
from agent.errors import InputError
from agent.gallery import Candidate, assign_faces
from agent.types import Image

FORMATS = ("jpeg", "png", "bmp", "webp")

CODES: dict[str, tuple[int, str]] = {
    "not_found": (404, "接口地址不正确"),
    "method_not_allowed": (404, "接口地址不正确"),
    "auth_unknown_key": (201, "用户不存在"),
    "auth_not_allowed": (601, "接口未开通"),
    "auth_disabled": (602, "账号停用"),
    "unavailable": (606, "调用超限,请稍候再试"),
    "busy": (609, "请求过于频繁,请稍候再试"),
    "engine_timeout": (610, "请求超时"),
    "internal": (500, "系统维护,请稍候再试"),
}


def _task_no() -> str:
    return f"{uuid.uuid4().int % 10**24:024d}"


class JumdataApi:
    name = "jumdata"
    prefix = "/face/"

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.rules = ImageRules(FORMATS, cfg.compat_image_bytes, cfg.compat_min_side, cfg.compat_max_side)

    def routes(self) -> list[Route]:
        return [route("POST", "/face/multi-search", self.multi_search, self.name)]

    def error(self, exc: Exception, req: Request) -> Response:
        code, message, param = classify(exc)
        num, msg = CODES.get(code, (400, "参数错误"))
        if num == 400:  # say which parameter, as integrators cannot see our logs
            msg = f"参数错误: {param + ' ' if param else ''}{message}"
        return json_response(500 if num == 500 else 200, {"msg": msg, "code": num})

    def multi_search(self, req: Request, p: dict[str, str]) -> Response:
        try:
            form = req.form()
        except ApiError:
            self._auth(req, {})
            raise
        self._auth(req, form)
        max_faces = get_int(form, "maxFaceNum", 1, 1, 10)
        threshold = get_int(form, "matchThreshold", 80, 0, 100)
        quality = get_choice(form, "qualityControl", "NONE", LEVELS)
        liveness = get_choice(form, "livenessControl", "NONE", LEVELS)
        max_users = get_int(form, "maxUserNum", 1, 1, 20)
        groups = self._groups(form)
        image = self._image(form)
        embs = self.ctx.analyze(image, max_faces)
        if quality != "NONE":
            embs = [e for e in embs if not self.ctx.quality.reasons(self.ctx.measure(image, e.face), quality)]
        if liveness != "NONE":
            embs = [e for e in embs if self.ctx.liveness(image, e.face, liveness).passed]
        per_face = [self._candidates(groups, e.vector, max_users + len(embs) - 1, threshold) for e in embs]
        assigned = assign_faces(per_face, max_users, float(threshold)) if embs else []
        face_list = [self._face(e, users) for e, users in zip(embs, assigned, strict=True)]
        return json_response(
            200,
            {
                "msg": "成功",
                "success": True,
                "code": 200,
                "taskNo": _task_no(),
                "charge": False,
                "data": {"face_num": len(face_list), "face_list": face_list},
            },
        )

    def _auth(self, req: Request, form: dict[str, Any]) -> None:
        q = {k: v[0] for k, v in req.query.items()}
        pick = lambda n: q.get(n) or (form.get(n) if isinstance(form.get(n), str) else None)  # noqa: E731
        self.ctx.auth.signed(req, "jumdata", pick("appId"), pick("timestamp"), pick("sign"))

    def _groups(self, form: dict[str, Any]) -> list[str]:
        gid = get_str(form, "group_id") or self.ctx.config.jumdata_default_group
        if gid is not None:
            try:
                return [self.ctx.gallery.get_group(group_id=gid).group_id]
            except ApiError:
                raise
            except InputError as exc:
                raise ApiError("bad_argument", f"group {gid} does not exist", "group_id") from exc
        return [g.group_id for g in self.ctx.gallery.list_groups()]

    def _image(self, form: dict[str, Any]) -> Image:
        limits = self.ctx.engine.config.images
        if form.get("file") not in (None, ""):
            if not isinstance(form["file"], bytes):
                raise ApiError("bad_argument", "file must be a multipart file part", "file")
            return check_image(form["file"], self.rules, "file", limits, self.ctx.decodes)
        if form.get("base64") not in (None, ""):
            raw = b64decode(form["base64"], "base64", self.rules.max_bytes * 4 // 3 + 4)
            return check_image(raw, self.rules, "base64", limits, self.ctx.decodes)
        if form.get("url") not in (None, ""):
            raise ApiError("url_unsupported", "image URLs are not fetched: the device works offline", "url")
        raise ApiError("missing_argument", "one of file, base64, url is required", "file")

    def _candidates(self, groups: list[str], vector, k: int, threshold: int) -> list[Candidate]:
        k = min(k, self.ctx.gallery.config.max_top_k)
        found = [
            c for g in groups for c in self.ctx.matcher.search(g, vector, top_k=k, min_score=float(threshold))
        ]
        return sorted(found, key=lambda c: -c.score)

    def _face(self, emb, users: list[Candidate]) -> dict[str, Any]:
        b = emb.face.box
        return {
            "face_token": self.ctx.tokens.put(emb.vector),
            "location": {
                "top": round(b.y1, 2),
                "left": round(b.x1, 2),
                "rotation": round(roll_degrees(emb.face)),
                "width": round(b.width),
                "height": round(b.height),
            },
            "user_list": [
                {
                    "score": round(u.score, 5),
                    "group_id": u.group_id,
                    "user_id": u.outer_id,
                    "user_info": u.user_info,
                }
                for u in users
            ],
        }
