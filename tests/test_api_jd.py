"""JD faceCreate / faceSearch / faceCompareV1 over real HTTP: shapes (the inner `result` is a JSON string),
signatures, and every business and system code the device produces."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import cv2
import numpy as np
import pytest
from test_api_support import (
    BIDEN,
    BIDEN_TALL,
    DISABLED_KEY,
    DOGS,
    NATIVE_ONLY_KEY,
    OBAMA,
    OBAMA2,
    OBAMA_AND_BIDEN,
    HeldEngine,
    b64,
    call,
    jd_auth,
    post_json,
    read,
    start,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = start(tmp_path_factory.mktemp("jd"))
    r.gallery.create_group("6979e9bd79b944b49e0d6e74079d5098", "test")
    yield r
    r.close()


def _q(auth: dict[str, str] | None = None, **extra: str) -> str:
    return "?" + urlencode({**(jd_auth() if auth is None else auth), **extra})


def create(run, outer_id: str, image: bytes, **group: str):
    return post_json(
        run, "/jdai/faceCreate" + _q(), {**group, "outerId": outer_id, "imageBase64": b64(image)}
    )


def search(run, image: bytes, query: dict[str, str]):
    # the documented body is a bare form field: imageBase64=xxxx
    body = urlencode({"imageBase64": b64(image)}).encode()
    return call(
        run,
        "POST",
        "/jdai/faceSearch" + _q(None, **query),
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )


def compare(run, a: bytes | str, b: bytes | str, auth: dict[str, str] | None = None):
    enc = lambda x: x if isinstance(x, str) else b64(x)  # noqa: E731
    return post_json(run, "/jdai/faceCompareV1" + _q(auth), {"imgBase64A": enc(a), "imgBase64B": enc(b)})


def _business(reply) -> tuple[int, str]:
    res = reply.json()["result"]
    return (res["status"], res["message"]) if "status" in res else (res["code"], res["msg"])


def _png(w: int, h: int) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 128, np.uint8))[1].tobytes()


def test_create_then_search_by_id_and_by_name(run, data_dir):
    r = create(run, "奥巴马", read(data_dir, OBAMA), groupId="6979e9bd79b944b49e0d6e74079d5098")
    body = r.json()
    assert r.status == 200 and body["code"] == "10000" and body["result"]["status"] == 0
    face_id = json.loads(body["result"]["result"])["faceId"]  # a JSON string inside the JSON
    assert len(face_id) == 32
    assert create(run, "biden", read(data_dir, BIDEN), groupName="test").json()["result"]["status"] == 0
    for query in ({"groupId": "6979e9bd79b944b49e0d6e74079d5098"}, {"groupName": "test"}):
        res = search(run, read(data_dir, OBAMA2), query).json()["result"]
        hits = json.loads(res["result"])["faceSearchResults"]
        assert hits[0]["faceID"]["outerId"] == "奥巴马" and hits[0]["faceID"]["faceId"] == face_id
        # sim is on faceCompareV1's scale: 0.49 = FAR 1e-4 (tests/test_api_jd_scale.py)
        assert hits[0]["faceID"]["sim"] > 0.49 and 0 < hits[0]["conf"] <= 1 and hits[0]["width"] > 40
    both = json.loads(
        search(run, read(data_dir, OBAMA_AND_BIDEN), {"groupName": "test"}).json()["result"]["result"]
    )
    assert {h["faceID"]["outerId"] for h in both["faceSearchResults"]} == {"奥巴马", "biden"}
    assert sorted(h["faceID"]["index"] for h in both["faceSearchResults"]) == [0, 1]


def test_without_group_the_default_group_is_used(tmp_path, data_dir):
    """groupId and groupName are optional in JD's documents: faceCreate / faceSearch then use
    `jd_default_group`, which faceCreate creates, but only for a face it enrols."""
    r = start(tmp_path / "a")
    try:
        assert _business(create(r, "dog", read(data_dir, DOGS))) == (10, "NoFaceDetected")
        assert [g.group_id for g in r.gallery.list_groups()] == []  # a refused create stores nothing
        assert _business(search(r, read(data_dir, OBAMA2), {})) == (20, "GroupNotFound")
        assert _business(create(r, "奥巴马", read(data_dir, OBAMA))) == (0, "success")
        assert [g.group_id for g in r.gallery.list_groups()] == ["default"]
        assert _business(create(r, "biden", read(data_dir, BIDEN))) == (0, "success")
        res = search(r, read(data_dir, OBAMA2), {}).json()["result"]
        hits = json.loads(res["result"])["faceSearchResults"]
        assert [h["faceID"]["outerId"] for h in hits] == ["奥巴马"]
        assert {p.outer_id for p in r.gallery.list_persons("default")} == {"奥巴马", "biden"}
    finally:
        r.close()
    r = start(tmp_path / "b", jd_default_group=None)  # no default: one of them is required, as before
    try:
        assert _business(create(r, "x", read(data_dir, OBAMA))) == (1, "NoRequiredFields")
        assert _business(search(r, read(data_dir, OBAMA), {})) == (1, "NoRequiredFields")
    finally:
        r.close()


def test_compare_scores_and_face_items(run, data_dir):
    same = compare(run, read(data_dir, OBAMA), read(data_dir, OBAMA2)).json()
    diff = compare(run, read(data_dir, OBAMA), read(data_dir, BIDEN)).json()["result"]
    res = same["result"]
    assert same["code"] == "10000" and res["code"] == 0 and res["msg"] == "Accept"
    assert float(res["score"]) > 0.49 > float(diff["score"])  # JD's threshold at FAR 1e-4
    item = res["faceItemsA"][0]
    assert set(item) == {"blurScore", "boundingBox", "isValidPosture", "posture"}
    assert set(item["posture"]) == {"yaw", "pitch", "roll"} and item["isValidPosture"] is True
    assert 0.0 <= float(item["blurScore"]) <= 1.0 and float(item["boundingBox"]["width"]) > 40


def test_business_error_codes(run, data_dir):
    grp = {"groupName": "test"}
    cases = [
        (post_json(run, "/jdai/faceCreate" + _q(), {"groupName": "test", "imageBase64": "aGk="}), 1),
        (post_json(run, "/jdai/faceCreate" + _q(), {"groupName": "test", "outerId": "x"}), 1),
        (compare(run, read(data_dir, OBAMA), ""), 1),
        (create(run, "x", _png(40, 40), **grp), 2),
        (create(run, "x", _png(4100, 60), **grp), 3),
        (compare(run, read(data_dir, OBAMA), read(data_dir, BIDEN_TALL)), 3),  # 2204 px > 2048 for compare
        (create(run, "x", b"GIF89a" + bytes(200), **grp), 4),
        (compare(run, read(data_dir, OBAMA), "@@@not-base64@@@"), 4),
        (compare(run, read(data_dir, OBAMA), "A" * (2 * 1024 * 1024 + 4)), 5),
        (create(run, "x", read(data_dir, DOGS), **grp), 10),
        (compare(run, read(data_dir, OBAMA), read(data_dir, DOGS)), 10),
        (create(run, "x", read(data_dir, OBAMA), groupName="no-such-group"), 20),
        (create(run, "bad\x00id", read(data_dir, OBAMA), **grp), 21),
        (
            call(run, "POST", "/jdai/faceCompareV1" + _q(), b"imgBase64A=x", {"Content-Type": "text/plain"}),
            31,
        ),
    ]
    for reply, code in cases:
        assert reply.status == 200 and reply.json()["code"] == "10000", reply.body[:200]
        assert _business(reply)[0] == code, (code, reply.body[:300])
    names = {_business(r) for r, _ in cases}
    assert {
        (1, "NoRequiredFields"),
        (2, "ImageIsTooSmall"),
        (5, "Base64IsTooLarge"),
        (10, "NoFaceDetected"),
        (31, "RequestBodyIsNotJson"),
    } <= names


def test_quality_and_posture_codes(tmp_path, data_dir):
    r = start(tmp_path, compare_quality="NORMAL")
    try:
        obama = cv2.imdecode(np.frombuffer(read(data_dir, OBAMA), np.uint8), cv2.IMREAD_COLOR)
        blurred = cv2.imencode(".jpg", cv2.GaussianBlur(obama, (0, 0), 12))[1].tobytes()
        h, w = obama.shape[:2]
        turned = cv2.warpAffine(obama, cv2.getRotationMatrix2D((w / 2, h / 2), 45, 1.0), (w, h))
        turned_jpg = cv2.imencode(".jpg", turned)[1].tobytes()
        assert _business(compare(r, read(data_dir, OBAMA2), blurred)) == (11, "InvalidFaceQuality")
        assert _business(compare(r, read(data_dir, OBAMA2), turned_jpg)) == (12, "InvalidFacePosture")
        assert _business(compare(r, read(data_dir, OBAMA2), read(data_dir, OBAMA)))[0] == 0
    finally:
        r.close()


def test_system_codes_for_auth_routing_and_limits(run, data_dir):
    img = read(data_dir, OBAMA)
    bad = {**jd_auth(), "sign": "0" * 32}
    assert compare(run, img, img, bad).json()["code"] == "10001"
    for text in ("张三", "0" * 31 + "😀"):  # non-ASCII: the family's authentication error, not a 500
        reply = compare(run, img, img, {**jd_auth(), "sign": text})
        assert (reply.status, reply.json()["code"]) == (401, "10001"), reply.body[:200]
    assert (
        compare(run, img, img, {k: v for k, v in jd_auth().items() if k != "sign"}).json()["code"] == "10002"
    )
    assert compare(run, img, img, jd_auth(ts_ms=1_000_000)).json()["code"] == "10003"
    auth = jd_auth()
    assert compare(run, img, img, auth).json()["code"] == "10000"
    replay = compare(run, img, img, auth)
    assert (replay.status, replay.json()["code"]) == (401, "10004")
    assert compare(run, img, img, jd_auth(key=DISABLED_KEY)).json()["code"] == "10005"
    assert compare(run, img, img, jd_auth(key=NATIVE_ONLY_KEY)).json()["code"] == "10006"
    assert compare(run, img, img, jd_auth(key="nobody-key")).json()["code"] == "10001"
    assert call(run, "POST", "/jdai/faceNothing", b"{}").json()["code"] == "10404"
    assert call(run, "GET", "/jdai/faceSearch").json()["code"] == "10405"
    assert (
        call(run, "POST", "/jdai/faceSearch", b"x", {"Transfer-Encoding": "chunked"}).json()["code"]
        == "10411"
    )
    huge = call(run, "POST", "/jdai/faceCreate", headers={"Content-Length": "999999999"})
    assert (huge.status, huge.json()["code"]) == (413, "10413")


def test_busy_and_timeout_codes(tmp_path, data_dir):
    img = read(data_dir, OBAMA)
    r = start(tmp_path / "a", engine_concurrency=1, engine_queue=0)
    held = HeldEngine(r, 1)
    try:
        reply = compare(r, img, img)
        assert (reply.status, reply.json()["code"]) == (429, "10020")
    finally:
        held.release()
        r.close()
    r = start(tmp_path / "b", engine_concurrency=1, engine_queue=1, engine_wait_s=0.3)
    held = HeldEngine(r, 1)
    try:
        assert _business(compare(r, img, img)) == (41, "TimeoutException")
    finally:
        held.release()
        r.close()
